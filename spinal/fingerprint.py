"""Content fingerprints of model checkpoints, so a trace key changes when the weights change.

``fingerprint_directory`` hashes the files of a Hugging Face model directory that decide its
outputs (config, tokenizer, weights). Hashing multi-GB weights is slow, so file digests are
cached in a JSON file keyed by (resolved path, size, mtime_ns): an unchanged file is read
once. ``fingerprint_state_dict`` hashes an in-memory model (the training callback uses it).

The two functions use different inputs, so a directory and the state dict loaded from it get
different fingerprints. This module imports torch only inside ``fingerprint_state_dict``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spinal.errors import ModelLoadError

logger = logging.getLogger(__name__)

FINGERPRINT_VERSION = "spinal-fingerprint-v1"
"""Prefix hashed into every fingerprint. Change it when the file selection or encoding changes."""

MODEL_FILE_NAMES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "tokenizer.model",
        "spiece.model",
        "vocab.json",
        "vocab.txt",
        "merges.txt",
        "chat_template.jinja",
        "chat_template.json",
    }
)
"""Config and tokenizer files hashed when present."""

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
"""Weight file suffixes hashed when present. ``*.index.json`` shard maps are hashed too."""

TRAINING_STATE_FILES = frozenset({"training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt"})
"""Trainer checkpoint files with weight suffixes that do not change the model's outputs."""

_CHUNK_BYTES = 1 << 20


def select_model_files(path: str | Path) -> list[Path]:
    """Return the files of a model directory that ``fingerprint_directory`` hashes, sorted by name.

    Only the top level is scanned, so ``checkpoint-*`` subfolders of a training run are left out.
    """
    directory = Path(path)
    selected = []
    for entry in directory.iterdir():
        if not entry.is_file():
            continue

        name = entry.name
        if name in TRAINING_STATE_FILES or name.startswith("rng_state"):
            continue

        if name in MODEL_FILE_NAMES or name.endswith(WEIGHT_SUFFIXES) or name.endswith(".index.json"):
            selected.append(entry)

    return sorted(selected, key=lambda entry: entry.name)


def fingerprint_directory(path: str | Path, *, cache_path: str | Path | None = None) -> str:
    """Hash the config, tokenizer and weight files of a model directory.

    The fingerprint is the SHA-256 over the sorted (file name, SHA-256 of content) pairs of
    ``select_model_files``, prefixed by ``FINGERPRINT_VERSION``.

    Args:
        path: Model directory (symlinks, as in the Hugging Face cache, are followed).
        cache_path: JSON file that caches file digests by (resolved path, size, mtime_ns).
            The store passes ``ROOT/fingerprints.json``. With ``None`` every file is hashed.

    Returns:
        64-character hex digest.

    Raises:
        ModelLoadError: When ``path`` is not a directory or contains no weight file.
    """
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise ModelLoadError(
            f"model directory not found: {directory}. Pass a folder with config.json and weights."
        )

    files = select_model_files(directory)
    if not any(entry.name.endswith(WEIGHT_SUFFIXES) for entry in files):
        raise ModelLoadError(
            f"no weight files (*.safetensors, *.bin, *.pt) in {directory}: pass a saved model folder."
        )

    cache = DigestCache(cache_path) if cache_path is not None else None
    outer = hashlib.sha256(FINGERPRINT_VERSION.encode())
    for entry in files:
        digest = cache.digest(entry) if cache is not None else hash_file(entry)
        outer.update(f"{entry.name}\0{digest}\n".encode())

    if cache is not None:
        cache.save()

    return outer.hexdigest()


def hash_file(path: str | Path) -> str:
    """Return the SHA-256 hex digest of a file's content, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)

    return digest.hexdigest()


class DigestCache:
    """File digests cached in a JSON file, keyed by resolved path and checked by size and mtime_ns.

    A missing or corrupt cache file starts an empty cache. ``save`` merges with the file's
    current entries and replaces it atomically, so concurrent writers lose at most each
    other's new entries and never leave a broken file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.entries: dict[str, dict[str, Any]] = self._read()
        self._dirty = False

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            logger.warning(
                "ignoring unreadable fingerprint cache %s (%s) and rebuilding it", self.path, error
            )
            return {}

        if not isinstance(data, dict):
            logger.warning("ignoring fingerprint cache %s (not a JSON object) and rebuilding it", self.path)
            return {}

        return {key: value for key, value in data.items() if isinstance(value, dict)}

    def digest(self, file_path: str | Path) -> str:
        """Return the file's SHA-256, hashing it only when size or mtime_ns changed."""
        resolved = os.path.realpath(file_path)
        stat = os.stat(resolved)
        entry = self.entries.get(resolved)
        if entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
            return str(entry["sha256"])

        digest = hash_file(resolved)
        self.entries[resolved] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
        self._dirty = True
        return digest

    def save(self) -> None:
        """Write the cache atomically (temporary file, fsync, os.replace) when it changed."""
        if not self._dirty:
            return

        merged = {**self._read(), **self.entries}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                json.dump(merged, stream, indent=1, sort_keys=True)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

        self.entries = merged
        self._dirty = False


def fingerprint_state_dict(state_dict: Mapping[str, Any]) -> str:
    """Hash an in-memory state dict: every entry's name, dtype, shape and raw bytes.

    Tensors on another device are copied to the CPU one at a time, so peak extra memory is
    about the largest tensor.
    Entries that are not tensors are hashed by type name and ``repr``.

    Args:
        state_dict: ``model.state_dict()``, with tensors of any dtype (bfloat16 included) and device.

    Returns:
        64-character hex digest.
    """
    import torch

    outer = hashlib.sha256(f"{FINGERPRINT_VERSION}/state_dict".encode())
    for name in sorted(state_dict):
        value = state_dict[name]
        if not isinstance(value, torch.Tensor):
            outer.update(f"{name}\0{type(value).__name__}\0{value!r}\n".encode())
            continue

        tensor = value.detach().to("cpu").contiguous()
        outer.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\n".encode())

        # Viewing as bytes works for every dtype, including bfloat16 that numpy lacks.
        outer.update(tensor.reshape(-1).view(torch.uint8).numpy())

    return outer.hexdigest()


def fingerprint_model(model: Any) -> str:
    """Return ``fingerprint_state_dict(model.state_dict())``."""
    return fingerprint_state_dict(model.state_dict())
