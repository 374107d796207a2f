"""Pretraining of the demo's base model: a small Llama trained from scratch with a plain torch loop."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


@dataclass(frozen=True)
class ModelShape:
    """Architecture of the demo model.

    Attributes:
        n_layers: Decoder blocks.
        hidden_size: Residual width.
        intermediate_size: Width of the SwiGLU MLP.
        n_heads: Attention heads (key/value heads are the same number).
        max_positions: Maximum sequence length, stored as max_position_embeddings.
    """

    n_layers: int = 10
    hidden_size: int = 128
    intermediate_size: int = 384
    n_heads: int = 4
    max_positions: int = 512


@dataclass(frozen=True)
class PretrainSchedule:
    """Optimisation settings of the pretraining loop.

    Attributes:
        steps: Optimiser steps.
        batch_size: Sequences per step.
        seq_len: Tokens per sequence.
        learning_rate: Peak AdamW learning rate, reached after ``warmup_steps`` and decayed to 10 %
            of the peak along a cosine.
        warmup_steps: Linear warm-up steps.
        weight_decay: AdamW weight decay.
        grad_clip: Maximum global gradient norm.
    """

    steps: int = 360
    batch_size: int = 16
    seq_len: int = 128
    learning_rate: float = 3e-3
    warmup_steps: int = 20
    weight_decay: float = 0.01
    grad_clip: float = 1.0


def build_model(shape: ModelShape, tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    """Create a randomly initialised Llama causal LM whose special token ids match the tokenizer.

    The input embedding and the output head are tied to keep the parameter count small.
    """
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.n_layers,
        num_attention_heads=shape.n_heads,
        num_key_value_heads=shape.n_heads,
        max_position_embeddings=shape.max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )

    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def token_stream(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str]) -> torch.Tensor:
    """Tokenize passages as ``<s> text </s>`` and concatenate them.

    Returns:
        Token ids, shape (n_tokens,), dtype int64.
    """
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def learning_rate_at(step: int, schedule: PretrainSchedule) -> float:
    """Return the learning rate of a 0-based step: linear warm-up, then cosine decay to 10 % of the peak."""
    if step < schedule.warmup_steps:
        return schedule.learning_rate * (step + 1) / schedule.warmup_steps

    progress = (step - schedule.warmup_steps) / max(1, schedule.steps - schedule.warmup_steps)
    return schedule.learning_rate * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def pretrain(
    model: LlamaForCausalLM,
    stream: torch.Tensor,
    schedule: PretrainSchedule,
    *,
    seed: int,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train a causal LM on random windows of a token stream.

    Each step draws ``batch_size`` window starts uniformly from a generator seeded with ``seed``,
    so the batches, and with deterministic kernels the weights, repeat exactly on the same machine.

    Args:
        model: The model to train in place, on CPU.
        stream: Token ids, shape (n_tokens,); needs more than ``seq_len`` tokens.
        schedule: Optimisation settings.
        seed: Seed of the window draws.
        on_step: Called after each step with the 1-based step and its loss.

    Returns:
        The training loss of every step.

    Raises:
        ValueError: When the stream is not longer than one window.
    """
    if stream.numel() <= schedule.seq_len:
        raise ValueError(
            f"token stream of {stream.numel()} tokens is too short for seq_len={schedule.seq_len}: lower seq_len."
        )

    generator = torch.Generator().manual_seed(seed)
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        (no_decay if parameter.ndim < 2 or "norm" in name else decay).append(parameter)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": schedule.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=schedule.learning_rate,
        betas=(0.9, 0.95),
    )

    offsets = torch.arange(schedule.seq_len)
    losses = []
    model.train()

    for step in range(schedule.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, schedule)

        starts = torch.randint(0, stream.numel() - schedule.seq_len, (schedule.batch_size,), generator=generator)
        batch = stream[starts[:, None] + offsets]

        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), schedule.grad_clip)
        optimizer.step()

        losses.append(loss.item())
        if on_step is not None:
            on_step(step + 1, losses[-1])

    model.eval()
    return losses
