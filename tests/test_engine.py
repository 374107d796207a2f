"""Trace engine invariants on tiny random models of every supported architecture."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from spinal.adapters import LogitLens, wrap_model
from spinal.engine import compute_trace, trace, trace_loaded
from spinal.errors import SpinalError, TraceError
from spinal.metrics import fisher_rao
from spinal.prompts import PromptSet
from spinal.settings import BootstrapSettings, TokenSettings, TraceSettings
from spinal.store import TraceStore
from tiny_models import TINY_CONFIGS, build_tiny, save_tiny

PROMPTS = PromptSet.from_texts(
    [
        "the quick brown fox jumps over the lazy dog and runs away",
        "a b c",
        "hello world",
        "numbers one two three four five six seven eight nine ten eleven twelve",
        "short",
        "the model reads every token of this longer sentence before it answers the question",
        "attention masks keep padding out of the statistics",
        "one more prompt to make the batch uneven",
    ],
    source="memory",
    format="memory",
)

FAST_SETTINGS = TraceSettings(bootstrap=BootstrapSettings(replicates=20, groups=4), tokens=TokenSettings(positions="all"))


@pytest.fixture(scope="module", params=sorted(TINY_CONFIGS))
def tiny(request):
    model, tokenizer = build_tiny(request.param)
    return wrap_model(model, tokenizer, source=f"tiny-{request.param}")


def dense_activations(loaded, prompts, positions="all"):
    """Return per-row stacked activations (tokens, hidden) and lens log-probs, one prompt at a time."""
    lens = LogitLens(loaded)
    rows = [[] for _ in range(loaded.n_layers + 1)]
    log_probs = [[] for _ in range(loaded.n_layers + 1)]

    with torch.no_grad():
        for text in prompts.texts:
            ids = loaded.tokenizer(text, return_tensors="pt")["input_ids"][:, : TokenSettings().max_tokens]
            with lens.capture_final_residual():
                output = loaded.model(input_ids=ids, output_hidden_states=True, use_cache=False)
                final = lens.final_residual
            states = list(output.hidden_states)
            states[-1] = final
            start = 1 if positions == "skip-first" else 0
            for row, state in enumerate(states):
                rows[row].append(state[0, start:].double())
                log_probs[row].append(lens.log_probs(state[0, start:]).double())

    return [torch.cat(row) for row in rows], [torch.cat(row) for row in log_probs]


def test_trace_row_count_is_layers_plus_one(tiny):
    computed = compute_trace(tiny, PROMPTS, settings=FAST_SETTINGS)

    assert len(computed.tables["layers"]) == tiny.n_layers + 1


def test_trace_gram_spectrum_matches_dense_svd(tiny):
    computed = compute_trace(tiny, PROMPTS, settings=FAST_SETTINGS, batch_size=3)
    activations, _ = dense_activations(tiny, PROMPTS)
    spectra = computed.tables["spectra"]

    for row, stacked in enumerate(activations):
        centered = stacked - stacked.mean(0)
        expected = torch.linalg.svdvals(centered).numpy()
        got = spectra[spectra["layer"] == row].sort_values("k")["sigma"].to_numpy()
        rank = len(got)
        assert np.allclose(got, expected[:rank], rtol=1e-4, atol=1e-6 * expected[0])


def test_trace_transport_matches_dense_lens(tiny):
    computed = compute_trace(tiny, PROMPTS, settings=FAST_SETTINGS, batch_size=3)
    _, log_probs = dense_activations(tiny, PROMPTS)
    layers = computed.tables["layers"]

    for row in range(tiny.n_layers):
        expected = fisher_rao(log_probs[row], log_probs[row + 1]).mean().item()
        assert layers.loc[row, "transport"] == pytest.approx(expected, abs=1e-5)


def test_trace_padding_does_not_change_results(tiny):
    single = compute_trace(tiny, PROMPTS, settings=FAST_SETTINGS, batch_size=1).tables["layers"]
    padded = compute_trace(tiny, PROMPTS, settings=FAST_SETTINGS, batch_size=8).tables["layers"]

    assert np.allclose(single["transport"], padded["transport"], atol=1e-5, equal_nan=True)
    assert np.allclose(single["alpha"], padded["alpha"], atol=1e-4, equal_nan=True)
    assert np.allclose(single["alpha_ci_low"], padded["alpha_ci_low"], atol=1e-4, equal_nan=True)


def test_trace_last_row_has_no_transport(tiny):
    layers = compute_trace(tiny, PROMPTS, settings=FAST_SETTINGS).tables["layers"]

    assert math.isnan(layers["transport"].iloc[-1])
    assert layers["transport_status"].iloc[-1] == "last_layer"


def test_trace_transport_within_bounds(tiny):
    layers = compute_trace(tiny, PROMPTS, settings=FAST_SETTINGS).tables["layers"]
    transport = layers["transport"].iloc[:-1]

    assert (transport >= 0).all()
    assert (transport <= math.pi).all()


@pytest.fixture(scope="module")
def llama():
    model, tokenizer = build_tiny("llama")
    return wrap_model(model, tokenizer, source="tiny-llama")


def test_positions_skip_first_drops_one_token(llama):
    settings = TraceSettings(tokens=TokenSettings(positions="skip-first"), bootstrap=BootstrapSettings(replicates=0))
    computed = compute_trace(llama, PROMPTS, settings=settings)
    prompts = computed.tables["prompts"]

    assert (prompts["n_used"] == prompts["n_tokens"] - 1).all()


def test_positions_last_uses_one_token(llama):
    settings = TraceSettings(tokens=TokenSettings(positions="last"), bootstrap=BootstrapSettings(replicates=0))
    many = PromptSet.from_texts([f"prompt number {index} with a few words" for index in range(40)], source="memory", format="memory")

    computed = compute_trace(llama, many, settings=settings)

    assert computed.n_tokens_used == 40


def test_max_tokens_truncates_and_counts(llama):
    settings = TraceSettings(tokens=TokenSettings(max_tokens=4, positions="all"), bootstrap=BootstrapSettings(replicates=0))

    computed = compute_trace(llama, PROMPTS, settings=settings)

    assert computed.tables["prompts"]["n_tokens"].max() == 4
    assert computed.n_truncated == int(computed.tables["prompts"]["truncated"].sum())
    assert computed.n_truncated > 0


def test_bootstrap_intervals_bracket_estimate(llama):
    many = PromptSet.from_texts(
        [f"sentence {index} about a dog, a cat and the number {index * 7}" for index in range(48)], source="memory", format="memory"
    )
    settings = TraceSettings(bootstrap=BootstrapSettings(replicates=50, groups=8))

    layers = compute_trace(llama, many, settings=settings).tables["layers"]
    steps = layers.iloc[:-1]

    assert (steps["transport_ci_low"] <= steps["transport"] + 1e-9).all()
    assert (steps["transport_ci_high"] >= steps["transport"] - 1e-9).all()
    assert layers["alpha_ci_low"].notna().all()


def test_bootstrap_off_gives_no_intervals(llama):
    settings = TraceSettings(bootstrap=BootstrapSettings(replicates=0))

    computed = compute_trace(llama, PROMPTS, settings=settings)

    assert computed.tables["layers"]["alpha_ci_low"].isna().all()
    assert len(computed.tables["replicates"]) == 0


def test_gram_memory_cap_skips_alpha_intervals(llama):
    settings = TraceSettings(bootstrap=BootstrapSettings(replicates=10, groups=4, max_gram_bytes=1))

    computed = compute_trace(llama, PROMPTS, settings=settings)

    assert computed.tables["layers"]["alpha_ci_low"].isna().all()
    assert any("Alpha intervals skipped" in warning for warning in computed.warnings)


def test_too_few_tokens_raises(llama):
    settings = TraceSettings(bootstrap=BootstrapSettings(replicates=0))
    tiny_set = PromptSet.from_texts(["a b", "c"], source="memory", format="memory")

    with pytest.raises(TraceError, match="No layer has enough singular values"):
        compute_trace(llama, tiny_set, settings=settings)


def test_no_selected_token_raises(llama):
    settings = TraceSettings(bootstrap=BootstrapSettings(replicates=0), tokens=TokenSettings(add_special_tokens=False))
    one_token = PromptSet.from_texts(["a"], source="memory", format="memory")

    with pytest.raises(TraceError, match="No token"):
        compute_trace(llama, one_token, settings=settings)


def test_chat_template_missing_raises(llama, monkeypatch):
    settings = TraceSettings(tokens=TokenSettings(chat_template=True))
    monkeypatch.setattr(llama.tokenizer, "chat_template", None)

    with pytest.raises(TraceError, match="no chat template"):
        compute_trace(llama, PROMPTS, settings=settings)


def test_chat_template_wraps_prompts(llama):
    plain = compute_trace(llama, PROMPTS, settings=FAST_SETTINGS)
    wrapped_settings = TraceSettings(bootstrap=FAST_SETTINGS.bootstrap, tokens=TokenSettings(positions="all", chat_template=True))

    wrapped = compute_trace(llama, PROMPTS, settings=wrapped_settings)

    assert wrapped.n_tokens > plain.n_tokens


def test_trace_restores_train_mode(llama):
    llama.model.train()

    compute_trace(llama, PROMPTS, settings=FAST_SETTINGS)

    assert llama.model.training
    llama.model.eval()


def test_trace_loaded_stores_series(llama, tmp_path):
    store = TraceStore(tmp_path / "store")

    result = trace_loaded(
        llama, PROMPTS, store=store, settings=FAST_SETTINGS, series={"name": "run", "step": 3, "epoch": 0.5}
    )

    assert result.run.manifest["series"]["step"] == 3
    assert not result.cached


@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny-llama"
    save_tiny("llama", path)
    return path


@pytest.fixture()
def prompt_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS.texts) + "\n", encoding="utf-8")
    return path


def test_trace_second_call_returns_stored_run(saved_llama, prompt_file, tmp_path, monkeypatch):
    store = TraceStore(tmp_path / "store")
    first = trace(str(saved_llama), prompt_file, store=store, settings=FAST_SETTINGS)

    def fail_load(*args, **kwargs):
        raise AssertionError("the model was loaded for a stored request")

    monkeypatch.setattr("spinal.adapters.load_model", fail_load)
    second = trace(str(saved_llama), prompt_file, store=store, settings=FAST_SETTINGS)

    assert second.cached
    assert second.run_id == first.run_id


def test_trace_key_changes_with_settings(saved_llama, prompt_file, tmp_path):
    store = TraceStore(tmp_path / "store")
    first = trace(str(saved_llama), prompt_file, store=store, settings=FAST_SETTINGS)

    changed = TraceSettings(bootstrap=FAST_SETTINGS.bootstrap, tokens=TokenSettings(positions="skip-first"))
    second = trace(str(saved_llama), prompt_file, store=store, settings=changed)

    assert second.run_id != first.run_id
    assert len(store.list_runs()) == 2


def test_trace_explicit_device_matches_auto_run(saved_llama, prompt_file, tmp_path):
    store = TraceStore(tmp_path / "store")
    auto = trace(str(saved_llama), prompt_file, store=store, settings=FAST_SETTINGS)

    explicit = trace(str(saved_llama), prompt_file, store=store, settings=FAST_SETTINGS, device="cpu", dtype="float32")

    assert explicit.cached
    assert explicit.run_id == auto.run_id


def test_trace_manifest_records_provenance(saved_llama, prompt_file, tmp_path):
    store = TraceStore(tmp_path / "store")

    manifest = trace(str(saved_llama), prompt_file, store=store, settings=FAST_SETTINGS).run.manifest

    assert manifest["model"]["model_type"] == "llama"
    assert manifest["model"]["dtype"] == "float32"
    assert manifest["settings"] == FAST_SETTINGS.to_dict()
    assert len(manifest["prompts"]["sha256"]) == 64
    assert "torch" in manifest["versions"]
    assert "layer=0 is the embedding output" in manifest["layer_convention"]


def assert_store_empty(store: TraceStore) -> None:
    assert store.list_runs() == []
    runs_dir = store.root / "runs"
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def test_bad_model_path_leaves_store_empty(prompt_file, tmp_path):
    store = TraceStore(tmp_path / "store")

    with pytest.raises(SpinalError, match="not found"):
        trace(str(tmp_path / "missing-model"), prompt_file, store=store, settings=FAST_SETTINGS)

    assert_store_empty(store)


def test_directory_without_config_rejected(prompt_file, tmp_path):
    store = TraceStore(tmp_path / "store")
    empty = tmp_path / "empty-model"
    empty.mkdir()

    with pytest.raises(SpinalError, match="config.json"):
        trace(str(empty), prompt_file, store=store, settings=FAST_SETTINGS)

    assert_store_empty(store)


def test_encoder_only_model_rejected(prompt_file, tmp_path):
    from transformers import BertConfig, BertModel

    path = tmp_path / "bert"
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    BertModel(config).save_pretrained(path)
    store = TraceStore(tmp_path / "store")

    with pytest.raises(SpinalError, match="bert"):
        trace(str(path), prompt_file, store=store, settings=FAST_SETTINGS)

    assert_store_empty(store)


def test_unknown_architecture_rejected(saved_llama, prompt_file, tmp_path):
    import json
    import shutil

    path = tmp_path / "unknown"
    shutil.copytree(saved_llama, path)
    config = json.loads((path / "config.json").read_text())
    config["model_type"] = "made_up_arch"
    (path / "config.json").write_text(json.dumps(config))
    store = TraceStore(tmp_path / "store")

    with pytest.raises(SpinalError, match="made_up_arch"):
        trace(str(path), prompt_file, store=store, settings=FAST_SETTINGS)

    assert_store_empty(store)


def test_empty_prompt_file_rejected(saved_llama, tmp_path):
    store = TraceStore(tmp_path / "store")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")

    with pytest.raises(SpinalError, match="no prompts"):
        trace(str(saved_llama), empty, store=store, settings=FAST_SETTINGS)

    assert_store_empty(store)


def test_malformed_jsonl_names_line(saved_llama, tmp_path):
    store = TraceStore(tmp_path / "store")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "fine"}\n{"prompt": "also fine"}\n{"prompt": broken\n', encoding="utf-8")

    with pytest.raises(SpinalError, match="line 3"):
        trace(str(saved_llama), broken, store=store, settings=FAST_SETTINGS)

    assert_store_empty(store)


def test_too_few_tokens_leaves_store_empty(saved_llama, tmp_path):
    store = TraceStore(tmp_path / "store")
    short = tmp_path / "short.txt"
    short.write_text("a\nb\n", encoding="utf-8")

    with pytest.raises(SpinalError, match="enough singular values"):
        trace(str(saved_llama), short, store=store, settings=FAST_SETTINGS)

    assert_store_empty(store)


def test_layers_table_columns_complete(llama):
    layers = compute_trace(llama, PROMPTS, settings=FAST_SETTINGS).tables["layers"]
    expected = {
        "layer", "depth", "n_tokens", "rank", "alpha", "alpha_status", "alpha_warning", "fit_k_min",
        "fit_k_max", "fit_points", "fit_r2", "alpha_ci_low", "alpha_ci_high", "transport", "transport_std",
        "transport_ci_low", "transport_ci_high", "transport_status",
    }

    assert expected <= set(layers.columns)
    assert isinstance(layers, pd.DataFrame)


def test_revision_with_local_directory_rejected(saved_llama, prompt_file, tmp_path):
    store = TraceStore(tmp_path / "store")

    with pytest.raises(SpinalError, match="drop --revision"):
        trace(str(saved_llama), prompt_file, store=store, settings=FAST_SETTINGS, revision="main")

    assert_store_empty(store)


def test_positions_last_drops_biased_alpha_intervals(llama):
    settings = TraceSettings(tokens=TokenSettings(positions="last"), bootstrap=BootstrapSettings(replicates=30, groups=8))
    few = PromptSet.from_texts([f"prompt {index} ends with word {index * 5}" for index in range(24)], source="memory", format="memory")

    computed = compute_trace(llama, few, settings=settings)
    layers = computed.tables["layers"]

    assert layers["alpha_ci_low"].isna().all()
    assert any("changes the rank" in warning for warning in computed.warnings)


def test_alpha_interval_contains_estimate(llama):
    many = PromptSet.from_texts(
        [f"sentence {index} about a dog, a cat and the number {index * 7}" for index in range(48)], source="memory", format="memory"
    )
    settings = TraceSettings(bootstrap=BootstrapSettings(replicates=50, groups=8))

    layers = compute_trace(llama, many, settings=settings).tables["layers"]
    inside = (layers["alpha_ci_low"] <= layers["alpha"]) & (layers["alpha"] <= layers["alpha_ci_high"])
    flagged = layers["alpha_warning"].str.contains("does not contain the estimate")

    assert (inside | flagged).all()


def test_rejected_model_writes_nothing_to_store(prompt_file, tmp_path):
    from transformers import BertConfig, BertModel

    path = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)).save_pretrained(path)
    store = TraceStore(tmp_path / "store")

    with pytest.raises(SpinalError):
        trace(str(path), prompt_file, store=store, settings=FAST_SETTINGS)

    assert not store.root.exists() or not any(store.root.rglob("*"))


def test_manifest_names_fingerprint_kind(saved_llama, llama, prompt_file, tmp_path):
    store = TraceStore(tmp_path / "store")

    from_directory = trace(str(saved_llama), prompt_file, store=store, settings=FAST_SETTINGS).run.manifest
    in_memory = trace_loaded(llama, PROMPTS, store=store, settings=FAST_SETTINGS).run.manifest

    assert from_directory["model"]["fingerprint_kind"] == "directory"
    assert in_memory["model"]["fingerprint_kind"] == "state_dict"
