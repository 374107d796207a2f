"""Trace keys: content hashes of everything that changes a trace's numbers.

Two keys exist. The content key hashes the weights fingerprint, the prompt set, every
setting, the resolved device type and dtype, and the schema version. It names the run.
The request key hashes what the user typed (device and dtype possibly ``auto``) plus a
cheap signature of the machine, and is stored as an alias to the run it produced. A repeated
request finds its run through the alias without importing torch or loading the model.

This module imports no torch.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

from spinal.settings import SCHEMA_VERSION, TraceSettings, canonical_hash


def machine_signature() -> dict[str, Any]:
    """Describe the machine cheaply, so that an ``auto`` device request is not reused across machines.

    Returns:
        Platform, processor type and whether NVIDIA device nodes or a CUDA device mask exist.
    """
    return {
        "platform": sys.platform,
        "machine": platform.machine(),
        "nvidia": Path("/dev/nvidiactl").exists(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def request_key(
    *,
    fingerprint: str,
    prompt_sha256: str,
    settings: TraceSettings,
    device: str,
    dtype: str,
    series: dict[str, Any] | None = None,
) -> str:
    """Return the key of a trace request as the user stated it (device and dtype may be ``auto``)."""
    return canonical_hash(
        {
            "kind": "request",
            "schema_version": SCHEMA_VERSION,
            "fingerprint": fingerprint,
            "prompts": prompt_sha256,
            "settings": settings.to_dict(),
            "device": device,
            "dtype": dtype,
            "series": series,
            "machine": machine_signature() if "auto" in (device, dtype) else None,
        }
    )


def content_key(
    *,
    fingerprint: str,
    prompt_sha256: str,
    settings: TraceSettings,
    device_type: str,
    dtype: str,
    series: dict[str, Any] | None = None,
) -> str:
    """Return the content key of a trace: the hash of everything that changes its numbers.

    Args:
        fingerprint: Weights fingerprint (covers weights, config and tokenizer files).
        prompt_sha256: Content hash of the prompt set.
        settings: All trace settings.
        device_type: Resolved device type (``cpu``, ``cuda`` or ``mps``); results differ in the
            last digits between devices.
        dtype: Resolved forward dtype name (``float32``, ``bfloat16``, ``float16``).
        series: Training-series position for callback traces, so each save gets its own run.
    """
    return canonical_hash(
        {
            "kind": "content",
            "schema_version": SCHEMA_VERSION,
            "fingerprint": fingerprint,
            "prompts": prompt_sha256,
            "settings": settings.to_dict(),
            "device_type": device_type,
            "dtype": dtype,
            "series": series,
        }
    )
