"""SpinalCallback inside real transformers and TRL training loops."""

from __future__ import annotations

import copy
import gzip
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Trainer, TrainerState, TrainingArguments

from spinal.callbacks import SpinalCallback, unwrap_model
from spinal.errors import SettingsError
from spinal.fingerprint import fingerprint_state_dict
from spinal.prompts import PromptSet
from spinal.settings import BootstrapSettings, TokenSettings, TraceSettings
from spinal.store import TraceStore, validate_tables
from tiny_models import build_tiny

TEXTS = [
    "the quick brown fox jumps over the lazy dog and runs away",
    "hello world how are you today my friend",
    "alignment changes the last layers more than the first ones",
    "def trace(model, prompts): return layers of the model",
    "once upon a time there was a little model that traced its own layers",
    "numbers one two three four five six seven eight nine ten",
]

PROMPTS = PromptSet.from_texts(TEXTS, source="memory", format="memory")

# TRL 1.16 reads a property that transformers 5 deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

FAST_SETTINGS = TraceSettings(
    bootstrap=BootstrapSettings(replicates=10, groups=2),
    tokens=TokenSettings(positions="all"),
)


class TokenDataset(torch.utils.data.Dataset):
    """Causal LM examples of equal length, so the default collator can stack them."""

    def __init__(self, tokenizer, texts, length=12):
        self.rows = []
        for text in texts:
            ids = tokenizer(text)["input_ids"][:length]
            ids = ids + [tokenizer.pad_token_id] * (length - len(ids))
            self.rows.append(torch.tensor(ids))

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return {"input_ids": self.rows[index], "labels": self.rows[index]}


def training_args(tmp_path, **overrides):
    values = {
        "output_dir": str(tmp_path / "out"),
        "max_steps": 4,
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-2,
        "save_strategy": "steps",
        "save_steps": 2,
        "save_only_model": True,
        "logging_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
    }
    values.update(overrides)
    return TrainingArguments(**values)


def train_tiny(tmp_path, callback, **overrides):
    model, tokenizer = build_tiny("llama")
    trainer = Trainer(
        model=model,
        args=training_args(tmp_path, **overrides),
        train_dataset=TokenDataset(tokenizer, TEXTS),
        processing_class=tokenizer,
        callbacks=[callback],
    )
    trainer.train()
    return trainer


def series_of(store):
    return {info.series["step"]: info for info in store.list_runs() if info.series}


def test_trainer_traces_each_save(tmp_path):
    store = TraceStore(tmp_path / "store")
    callback = SpinalCallback(PROMPTS, store=store, run_name="tiny-run", settings=FAST_SETTINGS)

    train_tiny(tmp_path, callback)

    assert sorted(callback.run_ids) == [2, 4]
    assert callback.failed_steps == []
    assert sorted(series_of(store)) == [2, 4]


def test_trainer_series_records_step_and_name(tmp_path):
    store = TraceStore(tmp_path / "store")
    callback = SpinalCallback(PROMPTS, store=store, run_name="tiny-run", settings=FAST_SETTINGS)

    train_tiny(tmp_path, callback)
    run = store.get(callback.run_ids[4])

    assert run.manifest["series"]["name"] == "tiny-run"
    assert run.manifest["series"]["step"] == 4
    assert run.manifest["series"]["epoch"] == pytest.approx(4 * 2 / len(TEXTS))
    assert run.manifest["label"] == "tiny-run step 4"
    assert run.manifest["model"]["source"] == str(tmp_path / "out" / "checkpoint-4")


def test_trainer_traced_weights_are_current(tmp_path):
    store = TraceStore(tmp_path / "store")
    callback = SpinalCallback(PROMPTS, store=store, settings=FAST_SETTINGS)

    trainer = train_tiny(tmp_path, callback)
    run = store.get(callback.run_ids[4])

    assert run.manifest["model"]["fingerprint"] == fingerprint_state_dict(trainer.model.state_dict())


def test_every_n_steps_without_saves(tmp_path):
    store = TraceStore(tmp_path / "store")
    callback = SpinalCallback(PROMPTS, store=store, every_n_steps=1, on_save=False, settings=FAST_SETTINGS)

    train_tiny(tmp_path, callback, save_strategy="no")

    assert sorted(callback.run_ids) == [1, 2, 3, 4]


def test_save_and_interval_trace_once(tmp_path):
    store = TraceStore(tmp_path / "store")
    callback = SpinalCallback(PROMPTS, store=store, every_n_steps=2, on_save=True, settings=FAST_SETTINGS)

    train_tiny(tmp_path, callback)

    assert sorted(callback.run_ids) == [2, 4]
    assert len(store.list_runs()) == 2


def test_default_series_name_is_output_folder(tmp_path):
    store = TraceStore(tmp_path / "store")
    callback = SpinalCallback(PROMPTS, store=store, settings=FAST_SETTINGS)

    train_tiny(tmp_path, callback, max_steps=2)

    assert store.get(callback.run_ids[2]).manifest["series"]["name"] == "out"


def test_trace_initial_adds_step_zero(tmp_path):
    store = TraceStore(tmp_path / "store")
    callback = SpinalCallback(PROMPTS, store=store, trace_initial=True, settings=FAST_SETTINGS)

    train_tiny(tmp_path, callback, max_steps=2)

    assert sorted(callback.run_ids) == [0, 2]


def test_injected_failure_keeps_training(tmp_path, monkeypatch, caplog):
    def broken_trace(*args, **kwargs):
        raise RuntimeError("injected trace failure")

    monkeypatch.setattr("spinal.engine.trace_loaded", broken_trace)
    callback = SpinalCallback(PROMPTS, store=TraceStore(tmp_path / "store"), settings=FAST_SETTINGS)

    with caplog.at_level(logging.ERROR, logger="spinal.callbacks"):
        trainer = train_tiny(tmp_path, callback)

    assert trainer.state.global_step == 4
    assert callback.failed_steps == [2, 4]
    assert callback.run_ids == {}
    assert "trace at step 2 failed" in caplog.text
    assert "injected trace failure" in caplog.text


def test_injected_failure_restores_train_mode(tmp_path, monkeypatch):
    def broken_trace(loaded, *args, **kwargs):
        loaded.model.eval()
        raise RuntimeError("injected trace failure")

    monkeypatch.setattr("spinal.engine.trace_loaded", broken_trace)
    model, tokenizer = build_tiny("llama")
    model.train()
    callback = SpinalCallback(PROMPTS, store=TraceStore(tmp_path / "store"), settings=FAST_SETTINGS)

    callback.on_save(
        training_args(tmp_path), TrainerState(global_step=1), None, model=model, processing_class=tokenizer
    )

    assert model.training
    assert callback.failed_steps == [1]


@pytest.mark.parametrize("training", [True, False])
def test_direct_save_keeps_model_mode(tmp_path, training):
    model, tokenizer = build_tiny("llama")
    model.train(training)
    callback = SpinalCallback(PROMPTS, store=TraceStore(tmp_path / "store"), settings=FAST_SETTINGS)

    callback.on_save(
        training_args(tmp_path), TrainerState(global_step=3), None, model=model, processing_class=tokenizer
    )

    assert model.training is training
    assert list(callback.run_ids) == [3]


def test_trace_leaves_tokenizer_unchanged(tmp_path):
    model, tokenizer = build_tiny("llama")
    tokenizer.padding_side = "left"
    callback = SpinalCallback(PROMPTS, store=TraceStore(tmp_path / "store"), settings=FAST_SETTINGS)

    callback.on_save(
        training_args(tmp_path), TrainerState(global_step=1), None, model=model, processing_class=tokenizer
    )

    assert list(callback.run_ids) == [1]
    assert tokenizer.padding_side == "left"


def test_missing_tokenizer_is_logged(tmp_path, caplog):
    model, _ = build_tiny("llama")
    callback = SpinalCallback(PROMPTS, store=TraceStore(tmp_path / "store"), settings=FAST_SETTINGS)

    with caplog.at_level(logging.ERROR, logger="spinal.callbacks"):
        callback.on_save(training_args(tmp_path), TrainerState(global_step=1), None, model=model)

    assert callback.failed_steps == [1]
    assert "no tokenizer to trace with" in caplog.text


def test_unwrap_model_removes_data_parallel():
    model, _ = build_tiny("llama")

    assert unwrap_model(torch.nn.DataParallel(model)) is model


def test_prompt_file_path_is_loaded(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")

    callback = SpinalCallback(path, store=tmp_path / "store")

    assert callback.prompt_set.texts == tuple(TEXTS)
    assert callback.store.root == (tmp_path / "store").absolute()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every_n_steps": 0}, "every_n_steps=0 is invalid"),
        ({"on_save": False}, "would never trace"),
        ({"batch_size": 0}, "batch_size=0 is invalid"),
    ],
)
def test_invalid_arguments_raise(tmp_path, kwargs, message):
    with pytest.raises(SettingsError, match=message):
        SpinalCallback(PROMPTS, store=tmp_path / "store", **kwargs)


def dpo_dataset(texts):
    import datasets

    rows = []
    for index, text in enumerate(texts):
        words = text.split(" ")
        other = texts[(index + len(texts) // 2) % len(texts)].split(" ")
        rows.append(
            {
                "prompt": " ".join(words[:4]),
                "chosen": " " + " ".join(words[4:8]),
                "rejected": " " + " ".join(other[4:8]),
            }
        )
    return datasets.Dataset.from_list(rows)


def dpo_config(tmp_path, **overrides):
    from trl import DPOConfig

    values = {
        "output_dir": str(tmp_path / "dpo"),
        "use_cpu": True,
        "bf16": False,
        "activation_checkpointing": False,
        "per_device_train_batch_size": 2,
        "max_steps": 2,
        "learning_rate": 1e-3,
        "save_strategy": "steps",
        "save_steps": 1,
        "save_only_model": True,
        "logging_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "max_length": 64,
        "seed": 0,
    }
    values.update(overrides)
    return DPOConfig(**values)


def test_dpo_trainer_traces_policy(tmp_path):
    from trl import DPOTrainer

    model, tokenizer = build_tiny("llama")
    store = TraceStore(tmp_path / "store")
    callback = SpinalCallback(PROMPTS, store=store, run_name="tiny-dpo", settings=FAST_SETTINGS)
    trainer = DPOTrainer(
        model=model,
        ref_model=copy.deepcopy(model),
        args=dpo_config(tmp_path),
        train_dataset=dpo_dataset(TEXTS),
        processing_class=tokenizer,
        callbacks=[callback],
    )

    trainer.train()
    last = store.get(callback.run_ids[2])

    assert sorted(callback.run_ids) == [1, 2]
    assert last.manifest["series"]["name"] == "tiny-dpo"
    assert last.manifest["model"]["fingerprint"] == fingerprint_state_dict(trainer.model.state_dict())


# Real checkpoint and real preference data -------------------------------------------------------


def shared_data_dir() -> Path:
    configured = os.environ.get("SPINAL_SHARED_DATA")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


STORIES = shared_data_dir() / "models" / "stories260K"
HH_PAIRS = shared_data_dir() / "preferences" / "hh-rlhf-harmless-base-test.jsonl.gz"


def hh_preference_rows(path: Path, count: int, max_chars: int = 600) -> list[dict[str, str]]:
    """Split HH-RLHF rows into prompt/chosen/rejected at the last assistant turn.

    Only rows whose dialogue fits in ``max_chars`` are kept, so short sequences suffice. The
    texts are never printed: the data set is red-team dialogue with offensive content.
    """
    marker = "\n\nAssistant:"
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            chosen, rejected = record["chosen"], record["rejected"]
            cut = chosen.rfind(marker) + len(marker)
            if cut < len(marker) or not rejected.startswith(chosen[:cut]):
                continue
            if max(len(chosen), len(rejected)) > max_chars or chosen[cut:] == rejected[cut:]:
                continue
            rows.append({"prompt": chosen[:cut], "chosen": chosen[cut:], "rejected": rejected[cut:]})
            if len(rows) == count:
                break
    return rows


@pytest.mark.slow
@pytest.mark.skipif(
    not (STORIES.is_dir() and HH_PAIRS.is_file()),
    reason="shared test data (models/stories260K, preferences/hh-rlhf-harmless-base-test.jsonl.gz) not found; "
    "set SPINAL_SHARED_DATA to its folder",
)
def test_real_dpo_series_on_stories260k(tmp_path):
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOTrainer

    model = AutoModelForCausalLM.from_pretrained(str(STORIES), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(STORIES))
    rows = hh_preference_rows(HH_PAIRS, count=32)
    trace_prompts = PromptSet.from_texts([row["prompt"] for row in rows[:16]], source="hh-sample", format="memory")
    settings = TraceSettings(bootstrap=BootstrapSettings(replicates=20, groups=4), tokens=TokenSettings(max_tokens=128))
    store = TraceStore(tmp_path / "store")
    callback = SpinalCallback(trace_prompts, store=store, run_name="stories-dpo", settings=settings, trace_initial=True)
    trainer = DPOTrainer(
        model=model,
        ref_model=copy.deepcopy(model),
        args=dpo_config(tmp_path, max_steps=4, save_steps=2, per_device_train_batch_size=4, max_length=256),
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[callback],
    )

    trainer.train()
    series = series_of(store)
    base, last = store.get(series[0].run_id), store.get(series[4].run_id)
    base_layers, last_layers = base.layers, last.layers

    assert len(rows) == 32
    assert callback.failed_steps == []
    assert sorted(series) == [0, 2, 4]
    assert all(info.series["name"] == "stories-dpo" for info in series.values())
    assert [series[step].series["epoch"] for step in (0, 2, 4)] == sorted(
        series[step].series["epoch"] for step in (0, 2, 4)
    )
    assert last.manifest["model"]["fingerprint"] == fingerprint_state_dict(trainer.model.state_dict())
    assert last.manifest["model"]["fingerprint"] != base.manifest["model"]["fingerprint"]
    assert np.nanmax(np.abs(last_layers["transport"].to_numpy() - base_layers["transport"].to_numpy())) > 1e-6
    assert len(last_layers) == model.config.num_hidden_layers + 1
    for info in series.values():
        validate_tables(
            {
                name: store.get(info.run_id).table(name)
                for name in ("layers", "prompts", "prompt_layers", "replicates", "spectra")
            }
        )
