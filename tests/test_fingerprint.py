"""Model fingerprints: directory hashing, the digest cache and in-memory state dicts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spinal import fingerprint
from spinal.errors import ModelLoadError
from spinal.fingerprint import (
    fingerprint_directory,
    fingerprint_model,
    fingerprint_state_dict,
    select_model_files,
)

SHARED_DATA = Path(
    os.environ.get("SPINAL_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)
STORIES_260K = SHARED_DATA / "models" / "stories260K"


def make_model_dir(path: Path, weights: bytes = b"\x00\x01weights" * 100) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2}))
    (path / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordLevel"}}))
    (path / "model.safetensors").write_bytes(weights)
    return path


@pytest.fixture
def hash_calls(monkeypatch):
    """Record the files that are read and hashed."""
    calls: list[str] = []
    original = fingerprint.hash_file

    def counting(path):
        calls.append(Path(path).name)
        return original(path)

    monkeypatch.setattr(fingerprint, "hash_file", counting)
    return calls


# Directories ------------------------------------------------------------------------------------


def test_directory_fingerprint_stable(tmp_path):
    model_dir = make_model_dir(tmp_path / "model")

    first = fingerprint_directory(model_dir)

    assert first == fingerprint_directory(model_dir)
    assert len(first) == 64


def test_directory_fingerprint_ignores_location(tmp_path):
    model_dir = make_model_dir(tmp_path / "model")
    copy_dir = tmp_path / "elsewhere" / "copy"
    shutil.copytree(model_dir, copy_dir)

    assert fingerprint_directory(model_dir) == fingerprint_directory(copy_dir)


def test_directory_fingerprint_tracks_weights(tmp_path):
    model_dir = make_model_dir(tmp_path / "model")
    before = fingerprint_directory(model_dir)

    (model_dir / "model.safetensors").write_bytes(b"\x00\x02weights" * 100)

    assert fingerprint_directory(model_dir) != before


def test_directory_fingerprint_tracks_config(tmp_path):
    model_dir = make_model_dir(tmp_path / "model")
    before = fingerprint_directory(model_dir)

    (model_dir / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 3}))

    assert fingerprint_directory(model_dir) != before


def test_directory_fingerprint_tracks_file_names(tmp_path):
    model_dir = make_model_dir(tmp_path / "model")
    before = fingerprint_directory(model_dir)

    (model_dir / "model.safetensors").rename(model_dir / "model-00001-of-00001.safetensors")

    assert fingerprint_directory(model_dir) != before


def test_directory_fingerprint_ignores_extras(tmp_path):
    model_dir = make_model_dir(tmp_path / "model")
    before = fingerprint_directory(model_dir)

    (model_dir / "README.md").write_text("notes")
    (model_dir / "training_args.bin").write_bytes(b"pickled arguments")
    (model_dir / "optimizer.pt").write_bytes(b"optimizer state")
    (model_dir / "rng_state.pth").write_bytes(b"rng")
    (model_dir / "checkpoint-10").mkdir()
    (model_dir / "checkpoint-10" / "model.safetensors").write_bytes(b"older weights")

    assert fingerprint_directory(model_dir) == before


def test_select_model_files_sorted(tmp_path):
    model_dir = make_model_dir(tmp_path / "model")
    (model_dir / "model.safetensors.index.json").write_text("{}")
    (model_dir / "generation_config.json").write_text("{}")

    names = [path.name for path in select_model_files(model_dir)]

    assert names == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
    ]


def test_directory_missing_raises(tmp_path):
    with pytest.raises(ModelLoadError, match=f"model directory not found: {tmp_path / 'absent'}"):
        fingerprint_directory(tmp_path / "absent")


def test_directory_without_weights_raises(tmp_path):
    model_dir = tmp_path / "config-only"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")

    with pytest.raises(ModelLoadError, match="no weight files"):
        fingerprint_directory(model_dir)


def test_directory_follows_symlinks(tmp_path):
    model_dir = make_model_dir(tmp_path / "model")
    linked = tmp_path / "snapshot"
    linked.mkdir()
    for path in model_dir.iterdir():
        (linked / path.name).symlink_to(path)

    assert fingerprint_directory(linked) == fingerprint_directory(model_dir)


@pytest.mark.skipif(not STORIES_260K.is_dir(), reason=f"real checkpoint not found at {STORIES_260K}")
def test_directory_real_checkpoint(tmp_path):
    cache_path = tmp_path / "fingerprints.json"

    first = fingerprint_directory(STORIES_260K, cache_path=cache_path)

    assert first == fingerprint_directory(STORIES_260K)
    assert "model.safetensors" in {path.name for path in select_model_files(STORIES_260K)}


# Digest cache -----------------------------------------------------------------------------------


def test_cache_skips_unchanged_files(tmp_path, hash_calls):
    model_dir = make_model_dir(tmp_path / "model")
    cache_path = tmp_path / "cache" / "fingerprints.json"

    first = fingerprint_directory(model_dir, cache_path=cache_path)
    calls_after_first = len(hash_calls)
    second = fingerprint_directory(model_dir, cache_path=cache_path)

    assert first == second
    assert calls_after_first == 3
    assert len(hash_calls) == 3


def test_cache_matches_uncached(tmp_path):
    model_dir = make_model_dir(tmp_path / "model")

    cached = fingerprint_directory(model_dir, cache_path=tmp_path / "fingerprints.json")

    assert cached == fingerprint_directory(model_dir)


def test_cache_rehashes_changed_file(tmp_path, hash_calls):
    model_dir = make_model_dir(tmp_path / "model")
    cache_path = tmp_path / "fingerprints.json"
    before = fingerprint_directory(model_dir, cache_path=cache_path)
    hash_calls.clear()

    weights = model_dir / "model.safetensors"
    stat = weights.stat()
    weights.write_bytes(b"\x00\x03weights" * 100)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    after = fingerprint_directory(model_dir, cache_path=cache_path)

    assert after != before
    assert hash_calls == ["model.safetensors"]


def test_cache_file_is_valid_json(tmp_path):
    model_dir = make_model_dir(tmp_path / "model")
    cache_path = tmp_path / "fingerprints.json"

    fingerprint_directory(model_dir, cache_path=cache_path)
    entries = json.loads(cache_path.read_text())

    weights_entry = entries[os.path.realpath(model_dir / "model.safetensors")]
    assert set(weights_entry) == {"size", "mtime_ns", "sha256"}
    assert weights_entry["size"] == (model_dir / "model.safetensors").stat().st_size
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []


def test_cache_corrupt_file_rebuilt(tmp_path, caplog):
    model_dir = make_model_dir(tmp_path / "model")
    cache_path = tmp_path / "fingerprints.json"
    cache_path.write_text("{truncated")

    digest = fingerprint_directory(model_dir, cache_path=cache_path)

    assert digest == fingerprint_directory(model_dir)
    assert "ignoring unreadable fingerprint cache" in caplog.text
    assert len(json.loads(cache_path.read_text())) == 3


def test_cache_keeps_other_entries(tmp_path):
    cache_path = tmp_path / "fingerprints.json"
    fingerprint_directory(make_model_dir(tmp_path / "a"), cache_path=cache_path)
    fingerprint_directory(make_model_dir(tmp_path / "b", weights=b"other"), cache_path=cache_path)

    assert len(json.loads(cache_path.read_text())) == 6


# State dicts ------------------------------------------------------------------------------------


def make_state_dict() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "embed.weight": torch.randn(8, 4, generator=generator),
        "norm.weight": torch.ones(4),
        "head.bias": torch.zeros(8),
    }


def test_state_dict_stable():
    assert fingerprint_state_dict(make_state_dict()) == fingerprint_state_dict(make_state_dict())


def test_state_dict_ignores_key_order():
    state = make_state_dict()
    reversed_state = dict(reversed(list(state.items())))

    assert fingerprint_state_dict(state) == fingerprint_state_dict(reversed_state)


def test_state_dict_tracks_one_element():
    state = make_state_dict()
    before = fingerprint_state_dict(state)

    state["embed.weight"][3, 2] += 1e-6

    assert fingerprint_state_dict(state) != before


def test_state_dict_tracks_dtype():
    state = make_state_dict()
    halved = {name: tensor.to(torch.float16) for name, tensor in state.items()}

    assert fingerprint_state_dict(state) != fingerprint_state_dict(halved)


def test_state_dict_tracks_names():
    state = make_state_dict()
    renamed = {f"model.{name}": tensor for name, tensor in state.items()}

    assert fingerprint_state_dict(state) != fingerprint_state_dict(renamed)


def test_state_dict_tracks_shape():
    state = make_state_dict()
    reshaped = dict(state, **{"embed.weight": state["embed.weight"].reshape(4, 8)})

    assert fingerprint_state_dict(state) != fingerprint_state_dict(reshaped)


def test_state_dict_bfloat16_and_scalars():
    state = {
        "w": torch.ones(3, dtype=torch.bfloat16),
        "scalar": torch.tensor(2.0),
        "mask": torch.tensor([True]),
    }

    assert len(fingerprint_state_dict(state)) == 64


def test_state_dict_non_contiguous():
    weight = torch.arange(12.0).reshape(3, 4)

    assert fingerprint_state_dict({"w": weight.t()}) == fingerprint_state_dict({"w": weight.t().contiguous()})


def test_fingerprint_model_uses_state_dict():
    model = torch.nn.Linear(4, 2)

    assert fingerprint_model(model) == fingerprint_state_dict(model.state_dict())


# Imports ----------------------------------------------------------------------------------------


def test_modules_import_without_torch():
    code = (
        "import sys; import spinal.fingerprint, spinal.store, spinal.prompts; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )

    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120
    )

    assert result.returncode == 0, result.stderr
