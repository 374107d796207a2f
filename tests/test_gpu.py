"""Trace engine on a CUDA device: same numbers as on the CPU in float32, finite fits in bfloat16."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spinal.adapters import wrap_model
from spinal.engine import compute_trace
from spinal.prompts import PromptSet
from spinal.settings import BootstrapSettings, TokenSettings, TraceSettings
from tiny_models import build_tiny

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

PROMPTS = PromptSet.from_texts(
    [f"prompt {index} talks about a cat, a dog and the number {index * 13}" for index in range(32)],
    source="memory",
    format="memory",
)
SETTINGS = TraceSettings(bootstrap=BootstrapSettings(replicates=20, groups=4), tokens=TokenSettings(positions="all"))


def traced_layers(device: str, dtype: torch.dtype):
    model, tokenizer = build_tiny("llama")
    model = model.to(device=device, dtype=dtype)
    return compute_trace(wrap_model(model, tokenizer, source="tiny-llama"), PROMPTS, settings=SETTINGS).tables["layers"]


def test_cuda_float32_matches_cpu():
    cpu = traced_layers("cpu", torch.float32)
    cuda = traced_layers("cuda", torch.float32)

    assert np.allclose(cpu["alpha"], cuda["alpha"], atol=1e-3)
    assert np.allclose(cpu["transport"], cuda["transport"], atol=1e-4, equal_nan=True)


def test_cuda_bfloat16_fits_every_row():
    layers = traced_layers("cuda", torch.bfloat16)

    assert (layers["alpha_status"] == "ok").all()
    assert np.isfinite(layers["transport"].iloc[:-1]).all()
