"""The trace engine: a model plus a prompt set in, one stored depth trace out.

Per layer the engine streams sufficient statistics instead of keeping activations:

* the Gram matrix H^T H (hidden x hidden) and the column sums of the layer's hidden states over
  the selected tokens. The singular values of H follow from them exactly. They are kept per
  prompt group, so that bootstrap replicates over prompts can be formed afterwards;
* per-token Fisher-Rao distances between adjacent layers' logit-lens distributions, computed
  chunk by chunk over tokens, so that layers x tokens x vocabulary logits never exist at once,
  and summed per prompt.

Memory therefore grows with hidden size and vocabulary, not with the number of prompts.

Torch and transformers are imported inside the functions that need them, so a cached request
(``trace`` finding its run through the request alias) never imports them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from spinal import __version__
from spinal.errors import ModelLoadError, SettingsError, StoreError, TraceError
from spinal.keys import content_key, request_key
from spinal.settings import SCHEMA_VERSION, TraceSettings
from spinal.streaming import ProgressCallback, StatisticsAccumulator, _report

if TYPE_CHECKING:
    import torch

    from spinal.adapters import LoadedModel
    from spinal.prompts import PromptSet
    from spinal.store import Run, TraceStore

logger = logging.getLogger(__name__)

LAYER_CONVENTION = (
    "Row layer=0 is the embedding output and rows 1..L are the block outputs. The residual of "
    "row L is taken before the final norm. depth = layer / L. alpha is fitted on every row; "
    "transport on row l is the mean Fisher-Rao distance from row l's logit-lens distribution "
    "to row l+1's, and NaN on row L."
)

PROMPT_TEXT_CHARS = 2000
"""Prompt text kept in the prompts table, for hover text in the dashboard."""


@dataclass(frozen=True)
class TraceResult:
    """Outcome of a trace request.

    Attributes:
        run_id: Identifier of the stored run.
        cached: True when the run was already in the store and nothing was computed.
        run: The stored run.
    """

    run_id: str
    cached: bool
    run: Run


@dataclass
class _TokenBatch:
    """One padded batch of prompts and the positions that enter the statistics."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    selected: torch.Tensor
    prompt_indices: list[int]


@dataclass
class _TokenizedPrompts:
    """Token ids per prompt, in prompt order."""

    ids: list[list[int]]
    truncated: list[bool]


def _validate_request(settings: TraceSettings, batch_size: int, max_prompts: int | None) -> None:
    settings.validate()

    if batch_size < 1:
        raise SettingsError(f"batch_size={batch_size} is invalid: use 1 or more.")

    if max_prompts is not None and max_prompts < 1:
        raise SettingsError(f"max_prompts={max_prompts} is invalid: use 1 or more, or leave it unset.")


def trace(
    source: str,
    prompts: str | Path | PromptSet,
    *,
    store: TraceStore | None = None,
    settings: TraceSettings | None = None,
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int = 8,
    max_prompts: int | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    label: str | None = None,
    progress: ProgressCallback | None = None,
    loader: Callable[..., LoadedModel] | None = None,
    series: dict[str, Any] | None = None,
) -> TraceResult:
    """Trace a checkpoint on a prompt set, or return the stored run for the same request.

    Args:
        source: Local model directory or Hugging Face hub id.
        prompts: Prompt file path, ``builtin:NAME``, or a loaded prompt set.
        store: Trace store; defaults to the store at the default root.
        settings: Trace settings; defaults to ``TraceSettings()``.
        device: ``auto`` (cuda, then mps, then cpu), or a torch device string.
        dtype: ``auto`` (bfloat16 on CUDA, float32 elsewhere), ``float32``, ``float16`` or ``bfloat16``.
        batch_size: Prompts per forward pass.
        max_prompts: Use only the first this many prompts.
        revision: Hub revision (branch, tag or commit).
        trust_remote_code: Allow model code from the checkpoint to run.
        allow_pickle: Allow pickled (``.bin``) weights when no safetensors exist.
        label: Display name of the run; defaults to the checkpoint's folder or hub name.
        progress: Optional progress callback.
        loader: Replacement for ``spinal.adapters.load_model`` with the same signature, for
            callers that keep loaded models in a cache (the dashboard).
        series: Training-series position ``{"name", "step", "epoch"}`` when the checkpoint is
            one save of a training run, or None.

    Returns:
        The trace result; ``cached`` is True when the model was not loaded at all.

    Raises:
        SpinalError: On bad input (missing model or prompts, unsupported architecture,
            invalid settings, too few tokens). Nothing is written to the store then.
    """
    from spinal.fingerprint import fingerprint_directory
    from spinal.store import TraceStore

    settings = settings or TraceSettings()
    _validate_request(settings, batch_size, max_prompts)
    store = store or TraceStore()

    prompt_set = _resolve_prompts(prompts, max_prompts)

    check_model_source(source, revision=revision, allow_pickle=allow_pickle)
    model_dir = _resolve_model_directory(source, revision)
    fingerprint = fingerprint_directory(model_dir, cache_path=store.fingerprint_cache_path)

    request = request_key(
        fingerprint=fingerprint,
        prompt_sha256=prompt_set.sha256,
        settings=settings,
        device=device,
        dtype=dtype,
        series=series,
    )
    aliased_run_id = store.alias(request)
    if aliased_run_id is not None:
        try:
            run = store.get(aliased_run_id)
        except StoreError:
            logger.warning("Request alias %s points to missing run %s; tracing again", request[:12], aliased_run_id)
        else:
            logger.info("Request %s found stored run %s", request[:12], aliased_run_id)
            return TraceResult(aliased_run_id, True, run)

    from spinal.adapters import load_model, resolve_device, resolve_dtype

    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    key = content_key(
        fingerprint=fingerprint,
        prompt_sha256=prompt_set.sha256,
        settings=settings,
        device_type=resolved_device.type,
        dtype=_dtype_name(resolved_dtype),
        series=series,
    )

    with store.lock(key):
        existing = store.find(key)
        if existing is not None:
            store.set_alias(request, existing.run_id)
            return TraceResult(existing.run_id, True, existing)

        _report(progress, "load", 0, 1)
        load_start = time.perf_counter()
        loaded = (loader or load_model)(
            str(model_dir),
            revision=None,
            device=str(resolved_device),
            dtype=_dtype_name(resolved_dtype),
            trust_remote_code=trust_remote_code,
            allow_pickle=allow_pickle,
        )
        loaded.source = source
        loaded.revision = revision
        load_seconds = time.perf_counter() - load_start
        _report(progress, "load", 1, 1)

        result = _trace_and_write(
            loaded,
            prompt_set,
            store=store,
            settings=settings,
            batch_size=batch_size,
            label=label or _default_label(source),
            key=key,
            fingerprint=fingerprint,
            series=series,
            progress=progress,
            load_seconds=load_seconds,
            trust_remote_code=trust_remote_code,
            fingerprint_kind="directory",
        )

    store.set_alias(request, result.run_id)
    return result


def trace_loaded(
    loaded: LoadedModel,
    prompt_set: PromptSet,
    *,
    store: TraceStore,
    settings: TraceSettings | None = None,
    batch_size: int = 8,
    label: str | None = None,
    series: dict[str, Any] | None = None,
    fingerprint: str | None = None,
    progress: ProgressCallback | None = None,
) -> TraceResult:
    """Trace a model that is already in memory (for example inside a training loop).

    Args:
        loaded: The wrapped model and tokenizer.
        prompt_set: Prompts to trace on.
        store: Trace store to write to.
        settings: Trace settings; defaults to ``TraceSettings()``.
        batch_size: Prompts per forward pass.
        label: Display name of the run.
        series: Training-series position, ``{"name", "step", "epoch"}``, or None.
        fingerprint: Weights fingerprint; computed from the state dict when None.
        progress: Optional progress callback.

    Returns:
        The trace result.
    """
    from spinal.fingerprint import fingerprint_state_dict

    settings = settings or TraceSettings()
    _validate_request(settings, batch_size, None)
    fingerprint_kind = "given" if fingerprint else "state_dict"
    fingerprint = fingerprint or fingerprint_state_dict(loaded.model.state_dict())

    key = content_key(
        fingerprint=fingerprint,
        prompt_sha256=prompt_set.sha256,
        settings=settings,
        device_type=loaded.device.type,
        dtype=_dtype_name(loaded.dtype),
        series=series,
    )

    with store.lock(key):
        existing = store.find(key)
        if existing is not None:
            return TraceResult(existing.run_id, True, existing)

        return _trace_and_write(
            loaded,
            prompt_set,
            store=store,
            settings=settings,
            batch_size=batch_size,
            label=label or _default_label(loaded.source),
            key=key,
            fingerprint=fingerprint,
            series=series,
            progress=progress,
            load_seconds=0.0,
            trust_remote_code=False,
            fingerprint_kind=fingerprint_kind,
        )


def _trace_and_write(
    loaded: LoadedModel,
    prompt_set: PromptSet,
    *,
    store: TraceStore,
    settings: TraceSettings,
    batch_size: int,
    label: str,
    key: str,
    fingerprint: str,
    series: dict[str, Any] | None,
    progress: ProgressCallback | None,
    load_seconds: float,
    trust_remote_code: bool,
    fingerprint_kind: str,
) -> TraceResult:
    trace_start = time.perf_counter()
    computed = compute_trace(loaded, prompt_set, settings=settings, batch_size=batch_size, progress=progress)
    trace_seconds = time.perf_counter() - trace_start

    manifest = _build_manifest(
        loaded,
        prompt_set,
        computed,
        settings=settings,
        key=key,
        label=label,
        fingerprint=fingerprint,
        series=series,
        timings={
            "load_s": round(load_seconds, 4),
            "trace_s": round(trace_seconds, 4),
            "total_s": round(load_seconds + trace_seconds, 4),
            "tokens_per_s": round(computed.n_tokens_used / trace_seconds, 2) if trace_seconds > 0 else None,
        },
        trust_remote_code=trust_remote_code,
        fingerprint_kind=fingerprint_kind,
    )

    _report(progress, "write", 0, 1)
    run = store.write_run(key, manifest, computed.tables)
    _report(progress, "write", 1, 1)

    logger.info("Stored run %s (%s) in %.2f s", run.run_id, label, trace_seconds)
    return TraceResult(run.run_id, False, run)


@dataclass
class ComputedTrace:
    """Tables and counts of one computed trace, before it is stored.

    Attributes:
        tables: The run tables by name (``layers``, ``prompts``, ``prompt_layers``,
            ``replicates``, ``spectra``).
        n_tokens: Tokens fed to the model, over all prompts after truncation.
        n_tokens_used: Tokens that entered the statistics.
        n_truncated: Prompts cut at ``max_tokens``.
        bootstrap: Group counts actually used for the intervals.
        warnings: Run-level warnings.
    """

    tables: dict[str, Any]
    n_tokens: int
    n_tokens_used: int
    n_truncated: int
    bootstrap: dict[str, Any]
    warnings: list[str]


def compute_trace(
    loaded: LoadedModel,
    prompt_set: PromptSet,
    *,
    settings: TraceSettings,
    batch_size: int = 8,
    progress: ProgressCallback | None = None,
) -> ComputedTrace:
    """Compute the per-layer and per-prompt tables of one trace.

    Args:
        loaded: The model, tokenizer and architecture spec.
        prompt_set: Prompts to trace on.
        settings: Trace settings.
        batch_size: Prompts per forward pass.
        progress: Optional progress callback.

    Returns:
        The computed tables.

    Raises:
        TraceError: When no token is selected, or no layer has enough tokens for a fit.
    """
    import torch

    from spinal.adapters import LogitLens

    tokenized = _tokenize(loaded, prompt_set, settings)
    n_prompts = len(tokenized.ids)
    used_per_prompt = [_count_selected(len(ids), settings.tokens.positions) for ids in tokenized.ids]
    n_tokens_used = int(sum(used_per_prompt))

    if n_tokens_used == 0:
        raise TraceError(
            f"No token of the {n_prompts} prompts enters the statistics with positions="
            f"{settings.tokens.positions!r}: use longer prompts or --positions all."
        )

    _check_context_length(loaded, tokenized)

    n_rows = loaded.n_layers + 1
    hidden_size = loaded.hidden_size
    accumulator = StatisticsAccumulator(
        n_rows=n_rows,
        hidden_size=hidden_size,
        n_prompts=n_prompts,
        vocab_size=loaded.vocab_size,
        settings=settings,
        device=loaded.device,
    )
    lens = LogitLens(loaded)

    order = sorted(range(n_prompts), key=lambda index: len(tokenized.ids[index]))
    batches = [order[start : start + batch_size] for start in range(0, n_prompts, batch_size)]

    was_training = loaded.model.training
    loaded.model.eval()
    try:
        with torch.no_grad():
            for batch_number, prompt_indices in enumerate(_progress_iter(batches)):
                batch = _make_batch(loaded, tokenized, prompt_indices, settings, pad_id=_pad_id(loaded))
                _process_batch(loaded, lens, batch, accumulator)
                _report(progress, "forward", batch_number + 1, len(batches))
    finally:
        loaded.model.train(was_training)

    tables, bootstrap_info, warnings = accumulator.finish(progress)

    if not (tables["layers"]["alpha_status"] == "ok").any():
        fit = settings.fit
        rank = int(tables["layers"]["rank"].max())
        window = max(math.floor(fit.fit_until * rank) - math.floor(fit.drop_top * rank), 0)
        raise TraceError(
            f"No layer has enough singular values for a fit: {n_tokens_used} selected tokens give rank "
            f"{rank}, and the fit window (--drop-top {fit.drop_top} to --fit-until {fit.fit_until} of the "
            f"rank) then holds {window} values, fewer than --min-points {fit.min_points}. "
            "Use more or longer prompts, or a wider window."
        )

    tables["prompts"] = _prompts_table(prompt_set, tokenized, used_per_prompt, accumulator.group_of_prompt)
    return ComputedTrace(
        tables=tables,
        n_tokens=int(sum(len(ids) for ids in tokenized.ids)),
        n_tokens_used=n_tokens_used,
        n_truncated=int(sum(tokenized.truncated)),
        bootstrap=bootstrap_info,
        warnings=warnings,
    )


def _progress_iter(batches: list[list[int]]):
    from tqdm.auto import tqdm

    return tqdm(batches, desc="trace", unit="batch", leave=False, disable=None)


def _pad_id(loaded: LoadedModel) -> int:
    tokenizer = loaded.tokenizer
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def _tokenize(loaded: LoadedModel, prompt_set: PromptSet, settings: TraceSettings) -> _TokenizedPrompts:
    tokenizer = loaded.tokenizer
    token_settings = settings.tokens
    ids: list[list[int]] = []
    truncated: list[bool] = []

    for index, text in enumerate(prompt_set.texts):
        add_special_tokens = token_settings.add_special_tokens
        if token_settings.chat_template:
            text = _apply_chat_template(loaded, text)
            add_special_tokens = False

        token_ids = tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
        if len(token_ids) == 0:
            raise TraceError(f"Prompt {index} tokenizes to no tokens: remove empty prompts from the set.")

        truncated.append(len(token_ids) > token_settings.max_tokens)
        ids.append(list(token_ids[: token_settings.max_tokens]))

    n_truncated = sum(truncated)
    if n_truncated:
        logger.warning(
            "%d of %d prompts are longer than max_tokens=%d and were truncated.",
            n_truncated,
            len(ids),
            token_settings.max_tokens,
        )

    return _TokenizedPrompts(ids=ids, truncated=truncated)


CONTEXT_ATTRIBUTES = ("n_positions", "max_position_embeddings", "seq_length", "n_ctx")
"""Config attributes that give a model's maximum number of positions, in lookup order."""


def _check_context_length(loaded: LoadedModel, tokenized: _TokenizedPrompts) -> None:
    config = loaded.model.config
    text_config = getattr(config, "text_config", None) or config
    context = next(
        (getattr(text_config, name) for name in CONTEXT_ATTRIBUTES if isinstance(getattr(text_config, name, None), int)),
        None,
    )
    longest = max(len(ids) for ids in tokenized.ids)
    if context is not None and longest > context:
        raise TraceError(
            f"Prompts reach {longest} tokens, but {loaded.source} accepts at most {context} positions: "
            f"pass --max-tokens {context} or less."
        )


def _apply_chat_template(loaded: LoadedModel, text: str) -> str:
    tokenizer = loaded.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise TraceError(
            f"The tokenizer of {loaded.source} has no chat template: drop --chat-template "
            "or use a checkpoint that ships one."
        )

    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )


def _count_selected(length: int, positions: str) -> int:
    if positions == "all":
        return length

    if positions == "last":
        return 1 if length > 0 else 0

    return max(length - 1, 0)


def _make_batch(
    loaded: LoadedModel,
    tokenized: _TokenizedPrompts,
    prompt_indices: list[int],
    settings: TraceSettings,
    pad_id: int,
) -> _TokenBatch:
    import torch

    lengths = [len(tokenized.ids[index]) for index in prompt_indices]
    width = max(lengths)
    input_ids = torch.full((len(prompt_indices), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompt_indices), width), dtype=torch.long)
    selected = torch.zeros((len(prompt_indices), width), dtype=torch.bool)

    for row, (index, length) in enumerate(zip(prompt_indices, lengths)):
        input_ids[row, :length] = torch.tensor(tokenized.ids[index], dtype=torch.long)
        attention_mask[row, :length] = 1

        if settings.tokens.positions == "all":
            selected[row, :length] = True
        elif settings.tokens.positions == "last":
            selected[row, length - 1] = True
        else:
            selected[row, 1:length] = True

    device = loaded.device
    return _TokenBatch(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        selected=selected.to(device),
        prompt_indices=prompt_indices,
    )


def _process_batch(loaded: LoadedModel, lens: Any, batch: _TokenBatch, accumulator: StatisticsAccumulator) -> None:
    import torch

    with lens.capture_final_residual():
        output = loaded.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            output_hidden_states=True,
            use_cache=False,
        )
        final_residual = lens.final_residual

    hidden_states = list(output.hidden_states)
    if len(hidden_states) != loaded.n_layers + 1:
        raise TraceError(
            f"The model returned {len(hidden_states)} hidden states, expected {loaded.n_layers + 1} "
            f"(layers + embedding) for model type {loaded.model_type}."
        )
    hidden_states[-1] = final_residual
    del output

    prompt_of_token = torch.tensor(batch.prompt_indices, device=batch.selected.device)
    prompt_of_token = prompt_of_token[:, None].expand_as(batch.selected)[batch.selected]

    selected_states = [state[batch.selected] for state in hidden_states]
    del hidden_states

    accumulator.add_hidden(selected_states, prompt_of_token)
    accumulator.add_transport(lens, selected_states, prompt_of_token)


def _prompts_table(
    prompt_set: PromptSet, tokenized: _TokenizedPrompts, used_per_prompt: list[int], group_of_prompt: np.ndarray
) -> Any:
    import pandas as pd

    return pd.DataFrame(
        {
            "prompt_index": np.arange(len(tokenized.ids), dtype=np.int64),
            "text": [text[:PROMPT_TEXT_CHARS] for text in prompt_set.texts],
            "n_tokens": np.array([len(ids) for ids in tokenized.ids], dtype=np.int64),
            "n_used": np.array(used_per_prompt, dtype=np.int64),
            "truncated": np.array(tokenized.truncated, dtype=bool),
            "group": group_of_prompt.astype(np.int64),
        }
    )


def _build_manifest(
    loaded: LoadedModel,
    prompt_set: PromptSet,
    computed: ComputedTrace,
    *,
    settings: TraceSettings,
    key: str,
    label: str,
    fingerprint: str,
    series: dict[str, Any] | None,
    timings: dict[str, Any],
    trust_remote_code: bool,
    fingerprint_kind: str,
) -> dict[str, Any]:
    import torch
    import transformers

    config = loaded.model.config
    architectures = getattr(config, "architectures", None) or [type(loaded.model).__name__]
    warnings = list(computed.warnings)
    if computed.n_truncated:
        warnings.append(
            f"{computed.n_truncated} of {len(prompt_set.texts)} prompts were truncated to "
            f"max_tokens={settings.tokens.max_tokens}."
        )

    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": key[:16],
        "key": key,
        "label": label,
        "created": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "layer_convention": LAYER_CONVENTION,
        "model": {
            "source": str(loaded.source),
            "revision": loaded.revision,
            "model_type": loaded.model_type,
            "architecture": architectures[0],
            "n_layers": loaded.n_layers,
            "hidden_size": loaded.hidden_size,
            "vocab_size": loaded.vocab_size,
            "fingerprint": fingerprint,
            "fingerprint_kind": fingerprint_kind,
            "dtype": _dtype_name(loaded.dtype),
            "device": str(loaded.device),
            "trust_remote_code": trust_remote_code,
        },
        "prompts": {
            "source": prompt_set.source,
            "format": prompt_set.format,
            "sha256": prompt_set.sha256,
            "n_prompts": len(prompt_set.texts),
            "n_tokens": computed.n_tokens,
            "n_tokens_used": computed.n_tokens_used,
            "n_truncated": computed.n_truncated,
        },
        "settings": settings.to_dict(),
        "bootstrap": computed.bootstrap,
        "versions": {
            "spinal": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
        },
        "timings": timings,
        "series": series,
        "warnings": warnings,
    }


CHECKPOINT_PATTERN = re.compile(r"checkpoint-(\d+)")
"""Folder names that transformers' Trainer gives its saves: checkpoint-<global step>."""


@dataclass(frozen=True)
class SeriesCheckpoint:
    """One save of a training run, found in a Trainer output directory.

    Attributes:
        path: The checkpoint-N folder.
        series: ``{"name", "step", "epoch"}`` for the trace manifest.
    """

    path: Path
    series: dict[str, Any]


def find_series_checkpoints(directory: str | Path, name: str | None = None) -> list[SeriesCheckpoint]:
    """List the checkpoint-N folders of a Trainer output directory, ordered by step.

    Args:
        directory: A Trainer ``output_dir``.
        name: Series name; defaults to the directory's name.

    Returns:
        One entry per checkpoint folder that contains a config.json; empty when there is none.
        The epoch comes from the folder's trainer_state.json when present.
    """
    root = Path(directory).expanduser()
    if not root.is_dir():
        return []

    found = []
    for child in root.iterdir():
        match = CHECKPOINT_PATTERN.fullmatch(child.name)
        if match is None or not (child / "config.json").is_file():
            continue

        found.append(
            SeriesCheckpoint(
                path=child,
                series={"name": name or root.resolve().name, "step": int(match.group(1)), "epoch": _trainer_epoch(child)},
            )
        )

    return sorted(found, key=lambda checkpoint: checkpoint.series["step"])


def _trainer_epoch(checkpoint: Path) -> float | None:
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None

    epoch = state.get("epoch") if isinstance(state, dict) else None
    return float(epoch) if isinstance(epoch, (int, float)) else None


def check_model_source(source: str, *, revision: str | None = None, allow_pickle: bool = False) -> None:
    """Check a local checkpoint's path, config, architecture, weights and tokenizer without loading it.

    Hub ids are checked when they are loaded, because checking them needs the network.

    Raises:
        ModelLoadError: The path is missing, has no config.json, no weights or no tokenizer.
        UnsupportedModelError: The model type is not in the adapter table.
    """
    from spinal.adapters import check_local_checkpoint

    from spinal.adapters import is_hub_id

    path = Path(source).expanduser()
    if path.exists() or not is_hub_id(source):
        check_local_checkpoint(_resolve_model_directory(source, revision), allow_pickle=allow_pickle)


def _resolve_prompts(prompts: str | Path | PromptSet, max_prompts: int | None) -> PromptSet:
    from spinal.prompts import PromptSet, load_prompts

    if isinstance(prompts, PromptSet):
        return prompts.head(max_prompts)
    return load_prompts(prompts, max_prompts=max_prompts)


def _resolve_model_directory(source: str, revision: str | None) -> Path:
    """Return the local directory of a checkpoint, downloading a hub id into the HF cache if needed."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"Model path {source} is a file: pass the checkpoint directory that contains config.json.")

        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"Model directory {source} has no config.json: pass a Hugging Face checkpoint "
                "directory (the output of save_pretrained)."
            )

        if revision is not None:
            raise ModelLoadError(
                f"Revision {revision!r} applies to hub ids, but {source} is a local directory: drop --revision."
            )
        return path.resolve()

    from spinal.adapters import is_hub_id

    if not is_hub_id(source):
        raise ModelLoadError(f"Model path not found: {source}. Check the path, or pass a hub id like 'gpt2'.")

    return _download_hub_snapshot(source, revision)


def _download_hub_snapshot(repo_id: str, revision: str | None) -> Path:
    # NOTE: untested here because this machine cannot reach the hub; only local paths are tested.
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.py", "*.bin"]
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except HFValidationError as error:
        raise ModelLoadError(
            f"Model {repo_id!r} is neither a local directory nor a valid hub id (owner/name): check the path."
        ) from error
    except RepositoryNotFoundError as error:
        raise ModelLoadError(f"Model {repo_id!r} is neither a local directory nor a hub repository: {error}") from error
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            raise ModelLoadError(
                f"Model {repo_id!r} is not in the local hub cache and HF_HUB_OFFLINE is set: pass a local "
                "checkpoint directory, or unset HF_HUB_OFFLINE to download it."
            ) from error
        raise ModelLoadError(
            f"Could not download {repo_id!r} from the hub ({type(error).__name__}): pass a local checkpoint "
            "directory, or check the network and HF_TOKEN."
        ) from error


def _default_label(source: str) -> str:
    path = Path(str(source))
    return path.name or str(source)


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


__all__ = [
    "LAYER_CONVENTION",
    "ComputedTrace",
    "TraceResult",
    "compute_trace",
    "trace",
    "trace_loaded",
]
