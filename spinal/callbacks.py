"""Trace a model while it trains: a transformers ``TrainerCallback`` that works with TRL trainers.

Attach ``SpinalCallback`` to a ``Trainer`` (or ``DPOTrainer``, ``SFTTrainer``, ...). At each
checkpoint save, or every N steps, it traces the weights in memory, without reloading them, and
stores the run with its series position ``{name, step, epoch}``, so the dashboard can plot how
the depth profile moves during training::

    trainer = DPOTrainer(..., callbacks=[SpinalCallback("prompts.txt", run_name="my-dpo")])

A failing trace never stops training: the error is logged with its step and the step is added
to ``SpinalCallback.failed_steps``.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from spinal.errors import SettingsError, TraceError
from spinal.prompts import PromptSet, load_prompts
from spinal.settings import TraceSettings
from spinal.store import TraceStore

logger = logging.getLogger(__name__)


class SpinalCallback(TrainerCallback):
    """Trace the model being trained at checkpoint saves or at a fixed step interval.

    Args:
        prompts: Prompt set, or a prompt file path / ``builtin:NAME`` for ``load_prompts``.
        store: Trace store, or its root folder; None uses the default store root.
        every_n_steps: Also trace every this many optimiser steps; None traces only at saves.
        on_save: Trace each time the Trainer saves a checkpoint.
        run_name: Series name in the run manifests; defaults to ``args.run_name``, then the
            name of ``args.output_dir``.
        settings: Trace settings; defaults to ``TraceSettings()``.
        batch_size: Prompts per forward pass while tracing.
        trace_initial: Also trace the weights before the first optimiser step, as step 0.
        tokenizer: Tokenizer to trace with; defaults to the Trainer's ``processing_class``.

    Attributes:
        run_ids: Stored run id per traced step.
        failed_steps: Steps whose trace raised (the error is logged).

    Raises:
        PromptSetError: When ``prompts`` cannot be loaded.
        SettingsError: When the settings are invalid or nothing would be traced.
    """

    def __init__(
        self,
        prompts: PromptSet | str | Path,
        store: TraceStore | str | Path | None = None,
        every_n_steps: int | None = None,
        on_save: bool = True,
        run_name: str | None = None,
        settings: TraceSettings | None = None,
        batch_size: int = 8,
        *,
        trace_initial: bool = False,
        tokenizer: Any = None,
    ) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise SettingsError(f"every_n_steps={every_n_steps} is invalid: use 1 or more, or None.")

        if every_n_steps is None and not on_save and not trace_initial:
            raise SettingsError(
                "SpinalCallback would never trace: pass on_save=True, every_n_steps=N or trace_initial=True."
            )

        if batch_size < 1:
            raise SettingsError(f"batch_size={batch_size} is invalid: use 1 or more.")

        self.settings = settings or TraceSettings()
        self.settings.validate()
        self.prompt_set = prompts if isinstance(prompts, PromptSet) else load_prompts(prompts)
        self.store = store if isinstance(store, TraceStore) else TraceStore(store)
        self.every_n_steps = every_n_steps
        self.trace_on_save = on_save
        self.trace_initial = trace_initial
        self.run_name = run_name
        self.batch_size = batch_size
        self.tokenizer = tokenizer

        self.run_ids: dict[int, str] = {}
        self.failed_steps: list[int] = []
        self._tracing_tokenizer: Any = None
        self._last_step: int | None = None

    # Trainer events ------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, **kwargs):
        if self.trace_initial:
            self._trace_safely(args, state, kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        if self.every_n_steps is not None and state.global_step % self.every_n_steps == 0:
            self._trace_safely(args, state, kwargs)

    def on_save(self, args, state, control, **kwargs):
        if self.trace_on_save:
            self._trace_safely(args, state, kwargs)

    # Tracing -------------------------------------------------------------------------------

    def series_name(self, args: Any) -> str:
        """Return the series name: ``run_name``, else ``args.run_name``, else the output folder's name."""
        if self.run_name:
            return self.run_name

        if getattr(args, "run_name", None):
            return str(args.run_name)

        return Path(args.output_dir).name or "training"

    def _trace_safely(self, args: Any, state: Any, event: dict[str, Any]) -> None:
        """Trace the current step once, on the main process, logging instead of raising."""
        step = int(state.global_step)
        if step == self._last_step or not state.is_world_process_zero:
            return
        self._last_step = step

        try:
            run_id = self._trace(args, state, event)
        except Exception:
            # Training must go on whatever the trace does, so every error is caught here.
            logger.exception("SpinalCallback: trace at step %d failed; training continues", step)
            self.failed_steps.append(step)
        else:
            self.run_ids[step] = run_id

    def _trace(self, args: Any, state: Any, event: dict[str, Any]) -> str:
        import torch

        from spinal.adapters import wrap_model
        from spinal.engine import trace_loaded

        step = int(state.global_step)
        model = event.get("model")
        if model is None:
            raise TraceError(f"the Trainer passed no model to the callback at step {step}.")
        model = unwrap_model(model)

        name = self.series_name(args)
        checkpoint = Path(args.output_dir) / f"checkpoint-{step}"
        source = str(checkpoint) if checkpoint.is_dir() else f"{name} (in memory)"
        loaded = wrap_model(model, self._tokenizer_for(event), source=source)

        was_training = model.training
        try:
            with torch.no_grad():
                result = trace_loaded(
                    loaded,
                    self.prompt_set,
                    store=self.store,
                    settings=self.settings,
                    batch_size=self.batch_size,
                    label=f"{name} step {step}",
                    series={"name": name, "step": step, "epoch": float(state.epoch or 0.0)},
                )
        finally:
            model.train(was_training)

        logger.info(
            "SpinalCallback: step %d traced as run %s%s",
            step,
            result.run_id,
            " (stored before)" if result.cached else "",
        )
        return result.run_id

    def _tokenizer_for(self, event: dict[str, Any]) -> Any:
        """Return a private copy of the tokenizer, because tracing sets its pad token and padding side."""
        if self._tracing_tokenizer is not None:
            return self._tracing_tokenizer

        tokenizer = self.tokenizer
        if tokenizer is None:
            tokenizer = event.get("processing_class")
        if tokenizer is None:
            tokenizer = event.get("tokenizer")

        # A multimodal processor carries its text tokenizer as an attribute.
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        if tokenizer is None:
            raise TraceError(
                "no tokenizer to trace with: pass tokenizer= to SpinalCallback or processing_class= to the Trainer."
            )

        self._tracing_tokenizer = copy.deepcopy(tokenizer)
        return self._tracing_tokenizer


def unwrap_model(model: Any) -> Any:
    """Return the plain transformers model inside accelerate, DDP, torch.compile or PEFT wrappers.

    NOTE: weights sharded by FSDP or DeepSpeed ZeRO-3 are not gathered first, and no test covers
    that case: expect a failed (logged) or wrong trace there.
    """
    from accelerate.utils import extract_model_from_parallel

    model = extract_model_from_parallel(model, keep_torch_compile=False)

    # A PEFT model's base model keeps the injected adapter layers, so its forward pass is the
    # adapted one. NOTE: untested, because the test environment does not install peft.
    get_base_model = getattr(model, "get_base_model", None)
    if callable(get_base_model):
        model = get_base_model()

    return model
