"""The demo build: corpus split, preference-pair rule, tokenizer, determinism, and a scaled-down build."""

from __future__ import annotations

import json
import os

import huggingface_hub.constants
import pytest
import torch

from spinal.demo import corpus
from spinal.demo.pretrain import ModelShape, PretrainSchedule, build_model, learning_rate_at, pretrain, token_stream
from spinal.demo.tokenizer import train_tokenizer
from spinal.errors import SettingsError
from spinal.prompts import load_prompts

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def passages():
    return corpus.split_passages(corpus.load_documents())


@pytest.fixture(scope="module")
def tokenizer(passages):
    texts = [passage.text for passage in corpus.training_passages(passages)]
    return train_tokenizer(texts, vocab_size=512, model_max_length=256)


def test_corpus_split_is_deterministic(passages):
    again = corpus.split_passages(corpus.load_documents())

    assert corpus.corpus_sha256(again) == corpus.corpus_sha256(passages)


def test_corpus_has_both_splits(passages):
    heldout = [passage for passage in passages if passage.heldout]

    assert len(passages) > 200
    assert 0.05 < len(heldout) / len(passages) < 0.2


def test_corpus_passages_are_single_line(passages):
    assert all("\n" not in passage.text for passage in passages)
    assert all("  " not in passage.text for passage in passages)


def test_heldout_rule_matches_hash(passages):
    assert all(passage.heldout == corpus.is_heldout(passage.text) for passage in passages)


def test_heldout_prompts_unseen_in_training(passages):
    training_text = "\n".join(passage.text for passage in corpus.training_passages(passages))

    for prompt in corpus.heldout_prompts(passages):
        assert prompt not in training_text


def test_heldout_prompts_have_fixed_length(passages):
    prompts = corpus.heldout_prompts(passages)

    assert len(prompts) > 30
    assert all(corpus.PROMPT_MIN_WORDS <= len(prompt.split(" ")) <= corpus.PROMPT_WORDS for prompt in prompts)


def test_split_merges_short_paragraphs():
    document = corpus.Document(name="test", text="one two three\n\nfour five six\n\n\nseven eight nine ten\n")

    merged = corpus.split_passages([document], min_words=6)

    assert [passage.text for passage in merged] == ["one two three four five six", "seven eight nine ten"]


def test_split_drops_repeats_and_underlines():
    first = corpus.Document(name="a", text="Title words here\n*****\n\nsame paragraph text here")
    second = corpus.Document(name="b", text="same paragraph text here\n\nfresh words in b")

    merged = corpus.split_passages([first, second], min_words=1)

    assert [passage.text for passage in merged] == [
        "Title words here",
        "same paragraph text here",
        "fresh words in b",
    ]


def test_license_search_skips_working_directory(tmp_path, monkeypatch):
    (tmp_path / "LICENSE").write_text("not the CPython licence", encoding="utf-8")
    monkeypatch.chdir(tmp_path)

    found = corpus.find_license_file()

    assert found is None or found.parent != tmp_path


def test_pairs_use_training_passages_only(passages):
    heldout_text = "\n".join(passage.text for passage in passages if passage.heldout)

    for pair in corpus.preference_pairs(passages):
        assert pair.prompt not in heldout_text


def test_pair_chosen_is_true_continuation(passages):
    training_texts = [passage.text for passage in corpus.training_passages(passages)]

    for pair in corpus.preference_pairs(passages)[:50]:
        assert any(text.startswith(pair.prompt + pair.chosen) for text in training_texts)


def test_pair_rejected_is_shuffled_chosen(passages):
    for pair in corpus.preference_pairs(passages):
        assert sorted(pair.rejected.split()) == sorted(pair.chosen.split())
        assert pair.rejected.startswith(" ")


def test_pair_rule_on_known_passages():
    texts = [" ".join(f"p{index}w{word}" for word in range(10)) for index in range(4)]
    documents = [corpus.Document(name=f"d{index}", text=text) for index, text in enumerate(texts)]
    passages = corpus.split_passages(documents, min_words=1, heldout_modulus=10**9)

    pairs = corpus.preference_pairs(passages, prompt_words=3, completion_words=4)

    assert len(pairs) == 4
    assert pairs[0].prompt == "p0w0 p0w1 p0w2"
    assert pairs[0].chosen == " p0w3 p0w4 p0w5 p0w6"
    assert pairs[0].rejected != pairs[0].chosen


def test_rejected_never_chosen_elsewhere(passages):
    pairs = corpus.preference_pairs(passages)
    chosen = {pair.chosen for pair in pairs}

    assert not any(pair.rejected in chosen for pair in pairs)


def test_pairs_differ_in_completion(passages):
    assert all(pair.chosen != pair.rejected for pair in corpus.preference_pairs(passages))


def test_tokenizer_special_tokens(tokenizer):
    ids = tokenizer("The class statement")["input_ids"]

    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "The class statement"
    assert [tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id] == [
        0,
        1,
        2,
        3,
    ]
    assert tokenizer.padding_side == "right"


def test_tokenizer_prompt_is_token_prefix(tokenizer, passages):
    # TRL's DPO splits prompt and completion where their token ids diverge.
    for pair in corpus.preference_pairs(passages)[:100]:
        prompt_ids = tokenizer(pair.prompt)["input_ids"]
        for completion in (pair.chosen, pair.rejected):
            assert tokenizer(pair.prompt + completion)["input_ids"][: len(prompt_ids)] == prompt_ids


def test_tokenizer_training_is_deterministic(passages, tokenizer):
    texts = [passage.text for passage in corpus.training_passages(passages)]

    again = train_tokenizer(texts, vocab_size=512, model_max_length=256)

    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


def test_builtin_heldout_set_registered(passages):
    prompt_set = load_prompts("builtin:pydoc-heldout")

    assert prompt_set.source == "builtin:pydoc-heldout"
    assert list(prompt_set.texts) == corpus.heldout_prompts(passages)


def test_learning_rate_schedule_shape():
    schedule = PretrainSchedule(steps=100, warmup_steps=10, learning_rate=1.0)

    assert learning_rate_at(0, schedule) == pytest.approx(0.1)
    assert learning_rate_at(9, schedule) == pytest.approx(1.0)
    assert learning_rate_at(99, schedule) == pytest.approx(0.1, abs=1e-3)


def test_pretrain_is_deterministic(tokenizer, passages):
    texts = [passage.text for passage in corpus.training_passages(passages)[:40]]
    shape = ModelShape(n_layers=2, hidden_size=32, intermediate_size=64, n_heads=2, max_positions=128)
    schedule = PretrainSchedule(steps=3, batch_size=2, seq_len=32, warmup_steps=1)
    stream = token_stream(tokenizer, texts)
    weights = []

    for _ in range(2):
        model = build_model(shape, tokenizer, seed=3)
        pretrain(model, stream, schedule, seed=3)
        weights.append(model.state_dict())

    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name


def test_pretrain_rejects_short_stream(tokenizer):
    model = build_model(ModelShape(n_layers=1, hidden_size=32, intermediate_size=64, n_heads=2), tokenizer, seed=0)

    with pytest.raises(ValueError, match="too short"):
        pretrain(model, torch.arange(10), PretrainSchedule(seq_len=32), seed=0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"steps": 5, "save_every": 2}, "not a multiple"),
        ({"steps": 2, "save_every": 4}, "save_every=4 is invalid"),
    ],
)
def test_demo_config_rejects_bad_dpo_schedule(changes, message):
    from dataclasses import replace

    from spinal.demo import DemoConfig

    config = DemoConfig.tiny()
    config = replace(config, dpo=replace(config.dpo, **changes))

    with pytest.raises(SettingsError, match=message):
        config.validate()


@pytest.mark.slow
def test_build_demo_end_to_end(tmp_path):
    from spinal.demo import DemoConfig, build_demo
    from spinal.store import TraceStore

    store = TraceStore(tmp_path / "store")
    config = DemoConfig.tiny()
    root = tmp_path / "demo"
    environment = {name: os.environ.get(name) for name in ("HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")}
    deterministic = torch.are_deterministic_algorithms_enabled()
    hub_offline = huggingface_hub.constants.HF_HUB_OFFLINE

    first = build_demo(root, store, progress=False, config=config)
    infos = {info.run_id: info for info in store.list_runs()}
    steps = sorted(info.series["step"] for info in infos.values())
    second = build_demo(root, store, progress=False, config=config)

    assert [step for step, _ in first.checkpoints] == [2, 4]
    assert steps == [0, 2, 4]
    assert set(infos) == set(first.run_ids)
    assert all(info.series["name"] == "demo-dpo" for info in infos.values())
    assert infos[first.base_run_id].label == "demo-base"
    assert infos[first.aligned_run_id].label == "demo-dpo step 4"
    assert store.get(first.base_run_id).manifest["prompts"]["source"] == "builtin:pydoc-heldout"
    assert not any(first.reused.values())
    assert all(second.reused.values())
    assert second.run_ids == first.run_ids
    assert {name: os.environ.get(name) for name in environment} == environment
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert huggingface_hub.constants.HF_HUB_OFFLINE == hub_offline
    assert (root / "base" / "model.safetensors").is_file()

    # A stage whose marker is gone is rebuilt, and every stage after it with it.
    (root / "base" / ".complete.json").unlink()
    third = build_demo(root, store, progress=False, config=config)

    assert third.reused == {"tokenizer": True, "pretrain": False, "dpo": False, "trace": True}
    assert third.run_ids == first.run_ids

    marker = json.loads((root / "dpo" / ".complete.json").read_text())
    assert marker["details"]["pairs"] > 100

    # force rebuilds every stage and recomputes the traces; the same seeds give the same runs.
    forced = build_demo(root, store, progress=False, force=True, config=config)

    assert not any(forced.reused.values())
    assert forced.run_ids == first.run_ids
    assert forced.aligned_dir == root / "dpo" / "checkpoint-4"
