"""The ``spinal demo`` build: a small Llama pretrained and DPO-aligned on CPython's own docs, then traced.

Importing this package registers ``builtin:pydoc-heldout`` (the demo's held-out trace prompts) and
imports no torch; ``build_demo``, ``DemoConfig`` and ``DemoResult`` load the training code on first use.
"""

from __future__ import annotations

from typing import Any

from spinal.demo.corpus import HELDOUT_SET_NAME, heldout_prompt_set
from spinal.prompts import register_builtin

register_builtin(HELDOUT_SET_NAME, heldout_prompt_set, replace=True)

_LAZY = {"build_demo", "DemoConfig", "DemoResult"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from spinal.demo import build

        return getattr(build, name)
    raise AttributeError(f"module 'spinal.demo' has no attribute {name!r}")


__all__ = ["DemoConfig", "DemoResult", "build_demo", "heldout_prompt_set"]
