"""Errors a user can cause. Each message is one line that names the value and the fix."""

from __future__ import annotations


class SpinalError(Exception):
    """Base class of every error SPINAL raises for bad input or a failed step."""


class ModelLoadError(SpinalError):
    """A model or tokenizer could not be loaded from the given source."""


class UnsupportedModelError(SpinalError):
    """The model's architecture is not in the adapter table, or it is not a causal LM."""


class PromptSetError(SpinalError):
    """A prompt file is missing, empty or malformed."""


class StoreError(SpinalError):
    """The trace store is missing a run or cannot be written."""


class TraceError(SpinalError):
    """A trace could not be computed from the given model and prompts."""


class SettingsError(SpinalError, ValueError):
    """A setting has a value outside its allowed range."""


__all__ = [
    "ModelLoadError",
    "PromptSetError",
    "SettingsError",
    "SpinalError",
    "StoreError",
    "TraceError",
    "UnsupportedModelError",
]
