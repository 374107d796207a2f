"""Shared test setup.

Hugging Face Hub offline mode is switched on before transformers is imported, unless the
environment sets HF_HUB_OFFLINE itself. A Hub id then fails at once instead of reaching the network.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("SPINAL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
STORIES_MODEL = SHARED_DATA / "models" / "stories260K"
HH_PROMPTS = SHARED_DATA / "preferences" / "hh-rlhf-harmless-base-test.jsonl.gz"
SEEDED_PROMPTS = 64


def require_shared_data() -> None:
    """Skip the calling test when the real checkpoint and prompts are not on this machine."""
    if not (STORIES_MODEL / "config.json").is_file() or not HH_PROMPTS.is_file():
        pytest.skip(f"real test data not found under {SHARED_DATA} (set SPINAL_SHARED_DATA to its folder)")


def derive_checkpoint(source: Path, target: Path, scale: float = 0.05, seed: int = 0) -> Path:
    """Save a copy of a checkpoint whose last two blocks carry seeded multiplicative noise."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source)
    generator = torch.Generator().manual_seed(seed)
    n_layers = model.config.num_hidden_layers
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if any(f"layers.{index}." in name for index in (n_layers - 2, n_layers - 1)):
                noise = torch.randn(parameter.shape, generator=generator) * scale
                parameter.mul_(1.0 + noise)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


@pytest.fixture(scope="session")
def seeded_store(tmp_path_factory):
    """A trace store with three real runs of stories260K on HH-RLHF prompts.

    Runs: the checkpoint with default settings (the reference), the same checkpoint with
    positions='all' (other settings), and a derived checkpoint with perturbed last blocks
    (the target).
    """
    require_shared_data()
    from spinal.engine import trace
    from spinal.settings import TokenSettings, TraceSettings
    from spinal.store import TraceStore

    root = tmp_path_factory.mktemp("seeded")
    store = TraceStore(root / "store")
    derived = derive_checkpoint(STORIES_MODEL, root / "stories260K-perturbed")

    trace(str(STORIES_MODEL), HH_PROMPTS, store=store, max_prompts=SEEDED_PROMPTS, label="stories260K")
    trace(
        str(STORIES_MODEL),
        HH_PROMPTS,
        store=store,
        max_prompts=SEEDED_PROMPTS,
        settings=TraceSettings(tokens=TokenSettings(positions="all")),
        label="stories260K all positions",
    )
    trace(str(derived), HH_PROMPTS, store=store, max_prompts=SEEDED_PROMPTS, label="stories260K perturbed")
    return store
