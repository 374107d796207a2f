"""DPO alignment of the demo's base model with TRL, saving a checkpoint at regular steps."""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

from spinal.demo.corpus import PreferencePair

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DPOSchedule:
    """Settings of the DPO stage.

    Attributes:
        steps: Optimiser steps; a multiple of ``save_every`` so the last step is saved.
        save_every: Steps between saved checkpoints (``checkpoint-N`` folders).
        batch_size: Preference pairs per step.
        learning_rate: AdamW learning rate, constant after ``warmup_steps``.
        warmup_steps: Linear warm-up steps.
        beta: DPO temperature: how far the policy may move from the reference.
        max_length: Maximum prompt plus completion length in tokens. Longer sequences are cut at the end.
    """

    steps: int = 120
    save_every: int = 20
    batch_size: int = 8
    learning_rate: float = 1e-4
    warmup_steps: int = 10
    beta: float = 0.1
    max_length: int = 160


class _StageProgress(TrainerCallback):
    """Progress bar of the DPO stage, in place of the Trainer's, showing the DPO loss and reward accuracy."""

    def __init__(self, description: str, enabled: bool) -> None:
        self.description = description
        self.enabled = enabled
        self.bar: Any = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = tqdm(total=state.max_steps, desc=self.description, disable=not self.enabled, unit="step")

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs:
            metrics = {name: round(logs[name], 3) for name in ("loss", "rewards/accuracies") if name in logs}
            self.bar.set_postfix(metrics)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_dpo(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[PreferencePair],
    output_dir: Path,
    schedule: DPOSchedule,
    *,
    seed: int,
    progress: bool = True,
    callbacks: Sequence[TrainerCallback] = (),
) -> list[dict[str, Any]]:
    """Train ``model`` with DPO on plain-text preference pairs and save checkpoints.

    The reference model is a frozen copy of ``model`` as passed in. Checkpoints hold only the
    model, tokenizer and trainer state (no optimizer state), in ``output_dir/checkpoint-N``
    for N = save_every, 2 * save_every, ..., steps.

    Args:
        model: Base model, trained in place on CPU.
        tokenizer: Its tokenizer (needs an eos token; TRL appends it to each completion).
        pairs: Preference pairs; the Trainer shuffles them with ``seed``.
        output_dir: Folder for the checkpoints.
        schedule: DPO settings.
        seed: Seed of the Trainer (shuffling, dropout).
        progress: Show a progress bar.
        callbacks: Extra Trainer callbacks, for example a SpinalCallback.

    Returns:
        The Trainer's log history (loss, rewards/accuracies, rewards/margins, ... per logging step).
    """
    import datasets
    from transformers.trainer_callback import ProgressCallback
    from trl import DPOConfig, DPOTrainer

    dataset = datasets.Dataset.from_list([asdict(pair) for pair in pairs])

    config = DPOConfig(
        output_dir=str(output_dir),
        use_cpu=True,
        bf16=False,
        fp16=False,
        # The new name of gradient_checkpointing in transformers 5. TRL turns it on by default, which slows tiny models.
        activation_checkpointing=False,
        per_device_train_batch_size=schedule.batch_size,
        gradient_accumulation_steps=1,
        max_steps=schedule.steps,
        learning_rate=schedule.learning_rate,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=schedule.warmup_steps,
        beta=schedule.beta,
        max_length=schedule.max_length,
        truncation_mode="keep_start",
        save_strategy="steps",
        save_steps=schedule.save_every,
        save_only_model=True,
        logging_strategy="steps",
        logging_steps=schedule.save_every,
        report_to="none",
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )

    bars_were_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        trainer = DPOTrainer(
            model=model,
            # With None, TRL reloads the reference from config._name_or_path. A copy is the model as passed in.
            ref_model=copy.deepcopy(model),
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=list(callbacks),
        )
    finally:
        if not bars_were_disabled:
            datasets.enable_progress_bars()

    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(_StageProgress("DPO", progress))

    with warnings.catch_warnings():
        # TRL 1.16 reads a property that transformers 5 deprecated, and callers cannot change that.
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        trainer.train()

    model.eval()
    return list(trainer.state.log_history)


def saved_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Return the ``checkpoint-N`` folders of a training run as (N, path), sorted by N."""
    found = []
    for path in output_dir.glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        if path.is_dir() and suffix.isdigit():
            found.append((int(suffix), path))
    return sorted(found)
