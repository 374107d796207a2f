"""Per-architecture access to a causal LM's final norm, unembedding and residual stream.

The logit lens of a residual vector h of width ``hidden_size`` is

    logits = transform(unembed(post(final_norm(h))))

Here ``post`` are the modules the model applies after its final norm (OPT's ``project_out``).
``unembed`` is ``model.get_output_embeddings()``, so tied weights and an LM-head bias act as in the
model. ``transform`` is the model's own logit post-processing: Gemma-2 softcapping, Cohere's logit
scale or Granite's logit divisor. Applied to the input of the final norm, the lens reproduces the
model's logits.

Layer convention: ``output_hidden_states=True`` gives L + 1 states. Entry 0 is the input of the first
decoder block, entry l the output of block l, and in transformers 5.25 the last entry is the output of
the final norm for every architecture in the table (for OPT with a projection it is the output of
``project_out``, narrower than the residual). The pre-norm residual of block L is therefore taken
with a forward pre-hook, see `LogitLens.capture_final_residual`.

This module imports torch and transformers lazily, so importing it for `ARCHITECTURES` or
`arch_spec_for` stays cheap.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spinal.errors import ModelLoadError, SettingsError, TraceError, UnsupportedModelError

if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArchSpec:
    """Locations of the modules and config settings that the logit lens needs in one architecture.

    Module paths are dotted attribute paths from the ``*ForCausalLM`` (or
    ``*ForConditionalGeneration``) root, as ``model.get_submodule`` takes them. An attribute that
    exists but is ``None`` (OPT without a final norm or without ``project_out``) is skipped.

    Attributes:
        final_norm: Final normalization applied to the output of the last block.
        post_norm: Modules applied after the final norm and before the unembedding, in order.
        softcap_attr: Config attribute of the final logit softcapping value c, applied as
            ``c * tanh(logits / c)`` when the value is not None.
        logit_scale_attr: Config attribute of a factor the logits are multiplied by.
        logit_divide_attr: Config attribute of a divisor the logits are divided by.
        decoder_layers: The ``ModuleList`` of decoder blocks; its length is the layer count L.
    """

    final_norm: str
    post_norm: tuple[str, ...] = ()
    softcap_attr: str | None = None
    logit_scale_attr: str | None = None
    logit_divide_attr: str | None = None
    decoder_layers: str = "model.layers"


# Every path and transform below was read from the modeling_*.py files of transformers 5.25 and is
# checked against the model's own logits for each entry in tests/test_adapters.py.
ARCHITECTURES: dict[str, ArchSpec] = {
    "bloom": ArchSpec(final_norm="transformer.ln_f", decoder_layers="transformer.h"),
    # CohereForCausalLM multiplies the logits by config.logit_scale.
    "cohere": ArchSpec(final_norm="model.norm", logit_scale_attr="logit_scale"),
    "falcon": ArchSpec(final_norm="transformer.ln_f", decoder_layers="transformer.h"),
    "gemma": ArchSpec(final_norm="model.norm"),
    "gemma2": ArchSpec(final_norm="model.norm", softcap_attr="final_logit_softcapping"),
    # AutoModelForCausalLM builds Gemma3ForConditionalGeneration (vision tower included) for
    # "gemma3". Its forward applies no final logit softcapping, unlike Gemma3ForCausalLM.
    "gemma3": ArchSpec(
        final_norm="model.language_model.norm",
        decoder_layers="model.language_model.layers",
    ),
    "gemma3_text": ArchSpec(final_norm="model.norm", softcap_attr="final_logit_softcapping"),
    "gpt2": ArchSpec(final_norm="transformer.ln_f", decoder_layers="transformer.h"),
    "gpt_neox": ArchSpec(final_norm="gpt_neox.final_layer_norm", decoder_layers="gpt_neox.layers"),
    # GraniteForCausalLM divides the logits by config.logits_scaling.
    "granite": ArchSpec(final_norm="model.norm", logit_divide_attr="logits_scaling"),
    "llama": ArchSpec(final_norm="model.norm"),
    "mistral": ArchSpec(final_norm="model.norm"),
    # OPT's decoder applies final_layer_norm (None when do_layer_norm_before is False) and then
    # project_out (None unless word_embed_proj_dim differs from hidden_size).
    "opt": ArchSpec(
        final_norm="model.decoder.final_layer_norm",
        post_norm=("model.decoder.project_out",),
        decoder_layers="model.decoder.layers",
    ),
    "phi": ArchSpec(final_norm="model.final_layernorm"),
    "phi3": ArchSpec(final_norm="model.norm"),
    "qwen2": ArchSpec(final_norm="model.norm"),
    "qwen3": ArchSpec(final_norm="model.norm"),
}

DTYPE_NAMES = ("auto", "float32", "float16", "bfloat16")

# Hugging Face Hub repository ids: "name" or "owner/name" of letters, digits, "-", "_" and ".".
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")

_SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
_PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt")


def supported_model_types() -> list[str]:
    """Return the model types in the adapter table, sorted."""
    return sorted(ARCHITECTURES)


def arch_spec_for(config: Any) -> ArchSpec:
    """Look up the adapter entry for a transformers config.

    Args:
        config: A transformers ``PretrainedConfig`` (anything with ``model_type``).

    Returns:
        The `ArchSpec` of ``config.model_type``.

    Raises:
        UnsupportedModelError: The model type is not in the table, which includes every
            encoder-only or encoder-decoder model (BERT, T5).
    """
    model_type = getattr(config, "model_type", None)
    spec = ARCHITECTURES.get(model_type) if isinstance(model_type, str) else None

    if spec is None:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported: SPINAL traces causal LMs of the types "
            f"{', '.join(supported_model_types())}."
        )

    return spec


def resolve_device(device: str = "auto") -> torch.device:
    """Turn a device name into a torch device, checking that it is available.

    Args:
        device: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Raises:
        SettingsError: The name is not one of the above.
        ModelLoadError: The device is not available on this machine.
    """
    import torch

    name = device.strip().lower()

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")

    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", name):
        raise SettingsError(f"device {device!r} is invalid: use auto, cpu, cuda, cuda:N or mps.")

    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"device {device!r} is not available (no CUDA device found): use auto or cpu."
            )
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ModelLoadError(
                f"device {device!r} is not available: this machine has {torch.cuda.device_count()} CUDA "
                "device(s), use cuda:0 or auto."
            )

    if name == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device {device!r} is not available (MPS backend missing): use auto or cpu.")

    return torch.device(name)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """Turn a dtype name into a torch dtype for weights on ``device``.

    Args:
        dtype: ``auto`` (bfloat16 on a CUDA device that supports it, float32 elsewhere),
            ``float32``, ``float16`` or ``bfloat16``.
        device: The device the model will run on.

    Raises:
        SettingsError: The name is not one of the above.
    """
    import torch

    name = dtype.strip().lower()

    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32

    if name not in DTYPE_NAMES:
        raise SettingsError(f"dtype {dtype!r} is invalid: use {', '.join(DTYPE_NAMES)}.")

    return getattr(torch, name)


@dataclass
class LoadedModel:
    """A causal LM ready for tracing, with what the engine needs to know about it.

    Attributes:
        model: The ``*ForCausalLM`` module, in eval mode when `load_model` built it.
        tokenizer: Its tokenizer, with a pad token and right padding.
        spec: Adapter entry of the architecture.
        model_type: ``config.model_type``.
        n_layers: Number of decoder blocks L.
        hidden_size: Width of the residual stream.
        vocab_size: Width of the lens logits (rows of the output embedding, which can exceed the
            tokenizer's length when the checkpoint pads its embedding matrix).
        device: Device of the model's parameters.
        dtype: Dtype of the model's parameters.
        source: Local directory or Hub id the model came from, or a label for an in-memory model.
        revision: Hub revision, None for local directories and in-memory models.
        architecture: Class name of the model, for example ``LlamaForCausalLM``.
        trust_remote_code: Whether code from the model repository was allowed to run.
    """

    model: Any
    tokenizer: Any
    spec: ArchSpec
    model_type: str
    n_layers: int
    hidden_size: int
    vocab_size: int
    device: Any
    dtype: Any
    source: str
    revision: str | None = None
    architecture: str = ""
    trust_remote_code: bool = False


def _resolve_module(model: nn.Module, path: str, *, required: bool) -> nn.Module | None:
    """Follow a dotted attribute path, returning None where an attribute on it is None.

    Raises:
        UnsupportedModelError: An attribute on the path is missing, or is None while required.
    """
    from torch import nn

    current: Any = model

    for part in path.split("."):
        if not hasattr(current, part):
            raise UnsupportedModelError(
                f"{type(model).__name__} has no module {path!r} (missing {part!r}): the adapter entry "
                f"for model_type {model.config.model_type!r} does not match this transformers version."
            )
        current = getattr(current, part)
        if current is None:
            break

    if current is None and required:
        raise UnsupportedModelError(f"{type(model).__name__}.{path} is None, but the logit lens needs it.")

    if current is not None and not isinstance(current, nn.Module):
        raise UnsupportedModelError(
            f"{type(model).__name__}.{path} is a {type(current).__name__}, not a module."
        )

    return current


def _ensure_pad_token(tokenizer: Any, source: str) -> None:
    """Give the tokenizer a pad token (its EOS, else its UNK) and right padding, in place."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            raise ModelLoadError(
                f"the tokenizer of {source} has no pad, eos or unk token: set tokenizer.pad_token first."
            )

    tokenizer.padding_side = "right"


def wrap_model(model: Any, tokenizer: Any, source: str = "in-memory") -> LoadedModel:
    """Describe an already loaded causal LM for tracing (for example inside a training callback).

    The model's train/eval mode, device and dtype are left as they are. The tokenizer gets a pad
    token and right padding, in place.

    Args:
        model: A transformers ``*ForCausalLM`` model of a supported type.
        tokenizer: Its tokenizer.
        source: Label recorded as the model source.

    Raises:
        UnsupportedModelError: The model type is not in the table, or the model has no LM head
            (for example a ``*ForSequenceClassification`` model).
        ModelLoadError: The tokenizer has no token usable for padding.
    """
    spec = arch_spec_for(model.config)

    unembedding = model.get_output_embeddings()
    if unembedding is None:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no output embeddings (LM head): load it with AutoModelForCausalLM."
        )

    layers = _resolve_module(model, spec.decoder_layers, required=True)
    text_config = model.config.get_text_config()
    first_parameter = next(model.parameters())

    _ensure_pad_token(tokenizer, source)

    if len(tokenizer) > unembedding.weight.shape[0]:
        logger.warning(
            "tokenizer of %s has %d entries but the output embedding has only %d rows, "
            "so larger token ids will fail",
            source,
            len(tokenizer),
            unembedding.weight.shape[0],
        )

    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        spec=spec,
        model_type=model.config.model_type,
        n_layers=len(layers),
        hidden_size=int(text_config.hidden_size),
        vocab_size=int(unembedding.weight.shape[0]),
        device=first_parameter.device,
        dtype=first_parameter.dtype,
        source=source,
        architecture=type(model).__name__,
    )


def is_hub_id(source: str) -> bool:
    """Return whether ``source`` is shaped like a Hub repository id rather than a file path."""
    if source.startswith((".", "/", "~")) or "\\" in source or ".." in source or "--" in source:
        return False
    return bool(_HUB_ID.match(source)) and not source.endswith(".")


def _first_line(error: BaseException) -> str:
    """Return the first non-empty line of an exception message, for one-line errors."""
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__


def check_local_checkpoint(directory: Path, *, allow_pickle: bool) -> bool:
    """Validate a local model directory before transformers reads it.

    Returns:
        The ``use_safetensors`` value for ``from_pretrained``: True when safetensors weights are
        present, False when only pickle weights are present and allowed.

    Raises:
        ModelLoadError: The directory has no config.json, an unreadable one, no weights, or only
            pickle weights without ``allow_pickle``.
        UnsupportedModelError: config.json names a model type outside the table.
    """
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(
            f"no config.json in {directory}: pass a directory written by save_pretrained or a Hub id."
        )

    try:
        raw_config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(
            f"{config_path} is not valid JSON ({_first_line(error)}): re-save the model."
        ) from error

    if not isinstance(raw_config, dict) or "model_type" not in raw_config:
        raise ModelLoadError(
            f"{config_path} has no model_type field: re-save the model with save_pretrained."
        )

    arch_spec_for(_RawConfig(raw_config["model_type"]))

    has_safetensors = any((directory / name).is_file() for name in _SAFETENSORS_FILES)
    has_pickle = any((directory / name).is_file() for name in _PICKLE_FILES)

    tokenizer_files = [name for name in _TOKENIZER_FILES if (directory / name).is_file()]
    if not tokenizer_files:
        raise ModelLoadError(
            f"no tokenizer files in {directory} (expected one of {', '.join(_TOKENIZER_FILES)}): "
            "save the tokenizer next to the model with tokenizer.save_pretrained."
        )

    if has_safetensors:
        return True

    if has_pickle and not allow_pickle:
        raise ModelLoadError(
            f"{directory} has only pickle weights (pytorch_model.bin), which can run code when loaded: "
            "pass --allow-pickle (allow_pickle=True) if you trust the files."
        )

    if has_pickle:
        return False

    raise ModelLoadError(f"no weights in {directory}: expected model.safetensors or pytorch_model.bin.")


@dataclass(frozen=True)
class _RawConfig:
    """The model_type of a config.json read without transformers, for `arch_spec_for`."""

    model_type: Any


def load_model(
    source: str,
    *,
    revision: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> LoadedModel:
    """Load a causal LM and its tokenizer from a local directory or a Hub id.

    A local directory needs config.json, weights and tokenizer files. Safetensors weights are
    used when present. Pickle weights (pytorch_model.bin) load only with ``allow_pickle``,
    because unpickling can run code.

    Args:
        source: Local directory, or a Hub id such as ``owner/name``.
        revision: Hub branch, tag or commit; only valid with a Hub id.
        device: See `resolve_device`.
        dtype: See `resolve_dtype`.
        trust_remote_code: Allow transformers to run code from the model repository.
        allow_pickle: Allow loading pickle weights when no safetensors weights exist.

    Returns:
        The model in eval mode on ``device``, with its tokenizer.

    Raises:
        ModelLoadError: The source is missing or unreadable, or the model or tokenizer failed to load.
        UnsupportedModelError: The model type is not in the adapter table.
        SettingsError: ``device`` or ``dtype`` is not a valid name.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)

    directory = Path(source).expanduser()
    is_local = directory.exists()

    if is_local:
        if not directory.is_dir():
            raise ModelLoadError(
                f"model path {source} is a file: pass the directory that contains config.json."
            )
        if revision is not None:
            raise ModelLoadError(
                f"revision {revision!r} applies only to Hub ids, but {source} is a local directory: "
                "drop the revision."
            )
        use_safetensors: bool | None = check_local_checkpoint(directory, allow_pickle=allow_pickle)
        location = str(directory)
    elif is_hub_id(source):
        # On the Hub, transformers picks safetensors first and falls back to pickle only when allowed.
        use_safetensors = None if allow_pickle else True
        location = source
    else:
        raise ModelLoadError(
            f"model path not found: {source} (not a directory, and not a Hub id of the form owner/name)."
        )

    try:
        config = AutoConfig.from_pretrained(location, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"failed to read the config of {source}: {_first_line(error)}") from error

    arch_spec_for(config)

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            location, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelLoadError(f"failed to load the tokenizer of {source}: {_first_line(error)}") from error

    load_kwargs: dict[str, Any] = {
        "revision": revision,
        "dtype": torch_dtype,
        "trust_remote_code": trust_remote_code,
        "use_safetensors": use_safetensors,
    }
    if torch_device.type != "cpu":
        # Loading straight onto the accelerator avoids a full copy of the weights in host memory.
        # NOTE: untested on CUDA and MPS, because test_load_on_accelerator runs only where such a
        # device exists.
        load_kwargs["device_map"] = torch_device

    from safetensors import SafetensorError

    try:
        model = AutoModelForCausalLM.from_pretrained(location, **load_kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as error:
        raise ModelLoadError(f"failed to load the weights of {source}: {_first_line(error)}") from error

    model = model.to(torch_device)
    model.eval()

    loaded = wrap_model(model, tokenizer, source=source)
    loaded.revision = revision
    loaded.trust_remote_code = trust_remote_code

    logger.info(
        "loaded %s (%s, %d layers, hidden %d) on %s as %s",
        source,
        loaded.architecture,
        loaded.n_layers,
        loaded.hidden_size,
        loaded.device,
        loaded.dtype,
    )
    return loaded


class LogitLens:
    """Map residual-stream vectors of any layer to the model's next-token distribution.

    The lens runs the model's own final norm, post-norm modules and output embedding, then the
    architecture's logit transforms, without gradients.

    Args:
        loaded: The model to read.

    Raises:
        UnsupportedModelError: A module path of the adapter entry is missing from the model.
    """

    def __init__(self, loaded: LoadedModel) -> None:
        model = loaded.model
        spec = loaded.spec
        text_config = model.config.get_text_config()

        self._loaded = loaded
        self._norm = _resolve_module(model, spec.final_norm, required=False)
        self._post_modules = [
            module
            for module in (_resolve_module(model, path, required=False) for path in spec.post_norm)
            if module is not None
        ]
        self._unembedding = model.get_output_embeddings()
        if self._unembedding is None:
            raise UnsupportedModelError(f"{type(model).__name__} has no output embeddings (LM head).")

        self._softcap = _config_value(text_config, spec.softcap_attr)
        self._scale = _config_value(text_config, spec.logit_scale_attr)
        self._divisor = _config_value(text_config, spec.logit_divide_attr)

        # The first module of the lens chain that exists receives the pre-norm residual of block L.
        chain = [self._norm, *self._post_modules, self._unembedding]
        self._capture_module = next(module for module in chain if module is not None)
        self._captured: torch.Tensor | None = None
        self._capturing = False

    @contextlib.contextmanager
    def capture_final_residual(self) -> Iterator[LogitLens]:
        """Record the input of the final norm during the forward passes run inside the block.

        Yields:
            This lens; after a forward pass, `final_residual` holds the residual of block L.
        """
        if self._capturing:
            raise RuntimeError("capture_final_residual() is already active on this lens.")

        def store_input(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else next(iter(kwargs.values()))
            self._captured = hidden.detach()

        self._captured = None
        self._capturing = True
        handle = self._capture_module.register_forward_pre_hook(store_input, with_kwargs=True)
        try:
            yield self
        finally:
            handle.remove()
            self._capturing = False

    @property
    def final_residual(self) -> torch.Tensor:
        """Residual of block L before the final norm, shape (batch, seq, hidden), from the last forward pass.

        Raises:
            TraceError: No forward pass ran inside `capture_final_residual`.
        """
        if self._captured is None:
            raise TraceError("no final residual captured: run the model inside capture_final_residual().")
        return self._captured

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Compute the lens logits of residual vectors.

        Args:
            hidden: Residual vectors, shape (..., hidden_size), any dtype and device.

        Returns:
            Logits, shape (..., vocab_size), float32 on the model's device.
        """
        import torch

        with torch.no_grad():
            values = hidden.to(device=self._loaded.device, dtype=self._loaded.dtype)

            if self._norm is not None:
                values = self._norm(values)
            for module in self._post_modules:
                values = module(values)

            logits = self._unembedding(values).float()

            if self._scale is not None:
                logits = logits * self._scale
            if self._divisor is not None:
                logits = logits / self._divisor
            if self._softcap is not None:
                logits = torch.tanh(logits / self._softcap) * self._softcap

        return logits

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """Compute the lens log-probabilities of residual vectors.

        Args:
            hidden: Residual vectors, shape (..., hidden_size).

        Returns:
            Log-softmax of the lens logits, shape (..., vocab_size), float32.
        """
        import torch

        return torch.log_softmax(self.logits(hidden), dim=-1)


def _config_value(config: Any, attribute: str | None) -> float | None:
    """Read an optional numeric config attribute, or return None when it is unnamed or unset."""
    if attribute is None:
        return None
    value = getattr(config, attribute, None)
    return None if value is None else float(value)


__all__ = [
    "ARCHITECTURES",
    "ArchSpec",
    "LoadedModel",
    "LogitLens",
    "arch_spec_for",
    "load_model",
    "resolve_device",
    "resolve_dtype",
    "supported_model_types",
    "wrap_model",
]
