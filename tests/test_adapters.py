"""Tests of the adapter table, the logit lens and model loading, on tiny models of every architecture."""

from __future__ import annotations

import dataclasses
import functools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from spinal.adapters import (
    ARCHITECTURES,
    LoadedModel,
    LogitLens,
    arch_spec_for,
    load_model,
    resolve_device,
    resolve_dtype,
    wrap_model,
)
from spinal.errors import ModelLoadError, SettingsError, TraceError, UnsupportedModelError
from tiny_models import HIDDEN_SIZE, N_LAYERS, TINY_CONFIGS, VOCAB_SIZE, build_tiny, save_tiny

MODEL_TYPES = sorted(ARCHITECTURES)
TRANSFORMED_TYPES = [
    model_type
    for model_type, spec in ARCHITECTURES.items()
    if spec.softcap_attr or spec.logit_scale_attr or spec.logit_divide_attr
]
PROMPTS = ["Once upon a time there was a fox.", "Hello world!"]
TOLERANCE = 1e-4


@dataclasses.dataclass
class Traced:
    """One forward pass of a tiny model with hidden states and the captured final residual."""

    loaded: LoadedModel
    lens: LogitLens
    inputs: dict[str, torch.Tensor]
    outputs: Any
    final_residual: torch.Tensor


@functools.lru_cache(maxsize=None)
def traced(model_type: str) -> Traced:
    """Run a tiny model once on a padded batch. The result is cached, because tests only read it."""
    model, tokenizer = build_tiny(model_type)
    loaded = wrap_model(model, tokenizer, source=f"tiny-{model_type}")
    lens = LogitLens(loaded)
    inputs = dict(tokenizer(PROMPTS, return_tensors="pt", padding=True))

    with torch.no_grad(), lens.capture_final_residual():
        outputs = model(**inputs, output_hidden_states=True)

    return Traced(loaded, lens, inputs, outputs, lens.final_residual)


def module_at(model: torch.nn.Module, path: str) -> torch.nn.Module | None:
    """Follow a dotted path, returning None where an attribute is None (OPT without project_out)."""
    current: Any = model
    for part in path.split("."):
        current = getattr(current, part)
        if current is None:
            return None
    return current


def manual_lens_logits(loaded: LoadedModel, hidden: torch.Tensor) -> torch.Tensor:
    """Apply the final norm, post modules, LM head and logit transforms step by step, as the model does."""
    model = loaded.model
    spec = loaded.spec
    config = model.config.get_text_config()

    values = hidden
    norm = module_at(model, spec.final_norm)
    if norm is not None:
        values = norm(values)
    for path in spec.post_norm:
        module = module_at(model, path)
        if module is not None:
            values = module(values)

    logits = model.lm_head(values).float()

    if spec.logit_scale_attr:
        logits = logits * getattr(config, spec.logit_scale_attr)
    if spec.logit_divide_attr:
        logits = logits / getattr(config, spec.logit_divide_attr)
    if spec.softcap_attr and getattr(config, spec.softcap_attr) is not None:
        cap = getattr(config, spec.softcap_attr)
        logits = torch.tanh(logits / cap) * cap

    return logits


def valid_positions(traced_run: Traced) -> torch.Tensor:
    """Boolean mask (batch, seq) of the non-pad positions."""
    return traced_run.inputs["attention_mask"].bool()


# Adapter table


def test_table_matches_tiny_configs() -> None:
    assert set(TINY_CONFIGS) == set(ARCHITECTURES)


def test_table_covers_required_types() -> None:
    required = {
        "gpt2", "gpt_neox", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2",
        "gemma3_text", "gemma3", "phi", "phi3", "opt", "falcon", "bloom",
    }  # fmt: skip

    assert required <= set(ARCHITECTURES)


def test_arch_spec_unknown_type_raises() -> None:
    config = type("FakeConfig", (), {"model_type": "made_up_lm"})()

    with pytest.raises(UnsupportedModelError) as caught:
        arch_spec_for(config)

    assert "made_up_lm" in str(caught.value)
    assert "llama" in str(caught.value)


def test_arch_spec_bert_config_raises() -> None:
    from transformers import BertConfig

    with pytest.raises(UnsupportedModelError, match="'bert'"):
        arch_spec_for(BertConfig())


def test_wrap_classification_model_raises() -> None:
    from transformers import LlamaForSequenceClassification

    model = LlamaForSequenceClassification(TINY_CONFIGS["llama"]())
    _, tokenizer = build_tiny("llama")

    with pytest.raises(UnsupportedModelError, match="no output embeddings"):
        wrap_model(model, tokenizer)


def test_import_adapters_skips_torch() -> None:
    code = "import sys, spinal.adapters; print('torch' in sys.modules, 'transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert result.stdout.split() == ["False", "False"]


# Layer convention and logit lens, for every architecture


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_wrap_model_fields(model_type: str) -> None:
    loaded = traced(model_type).loaded

    assert loaded.model_type == model_type
    assert loaded.n_layers == N_LAYERS
    assert loaded.hidden_size == HIDDEN_SIZE
    assert loaded.vocab_size == VOCAB_SIZE
    assert loaded.dtype == torch.float32
    assert loaded.device == torch.device("cpu")


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_hidden_states_count(model_type: str) -> None:
    run = traced(model_type)

    assert len(run.outputs.hidden_states) == run.loaded.n_layers + 1


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_final_residual_shape(model_type: str) -> None:
    run = traced(model_type)
    batch, seq = run.inputs["input_ids"].shape

    assert run.final_residual.shape == (batch, seq, HIDDEN_SIZE)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_lens_reproduces_model_logits(model_type: str) -> None:
    run = traced(model_type)
    mask = valid_positions(run)

    lens_log_probs = run.lens.log_probs(run.final_residual)
    model_log_probs = torch.log_softmax(run.outputs.logits.float(), dim=-1)

    assert lens_log_probs.dtype == torch.float32
    assert lens_log_probs.shape == model_log_probs.shape
    assert (lens_log_probs[mask] - model_log_probs[mask]).abs().max().item() < TOLERANCE


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_last_hidden_state_is_normed(model_type: str) -> None:
    # transformers returns the final norm's output (after OPT's project_out) as the last hidden
    # state, which is why the engine takes the residual of block L from the pre-hook instead.
    run = traced(model_type)
    model = run.loaded.model
    spec = run.loaded.spec

    expected = run.final_residual
    norm = module_at(model, spec.final_norm)
    if norm is not None:
        expected = norm(expected)
    for path in spec.post_norm:
        module = module_at(model, path)
        if module is not None:
            expected = module(expected)

    assert torch.allclose(run.outputs.hidden_states[-1], expected, atol=1e-6)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_lens_matches_manual_chain(model_type: str) -> None:
    run = traced(model_type)

    for layer in range(run.loaded.n_layers):
        hidden = run.outputs.hidden_states[layer]
        with torch.no_grad():
            expected = manual_lens_logits(run.loaded, hidden)

        difference = (run.lens.logits(hidden) - expected).abs().max().item()
        assert difference < TOLERANCE, f"layer {layer}: max difference {difference:.2e}"


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_block_inputs_match_hidden_states(model_type: str) -> None:
    # Entry l of hidden_states must be the input of block l, and the output of the last block
    # must be the captured final residual.
    run = traced(model_type)
    model = run.loaded.model
    blocks = module_at(model, run.loaded.spec.decoder_layers)
    block_inputs: list[torch.Tensor] = []
    block_outputs: list[torch.Tensor] = []
    handles = []

    def store_input(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if args:
            block_inputs.append(args[0])
        else:
            block_inputs.append(kwargs["hidden_states"])

    def store_output(module: torch.nn.Module, args: tuple, output: Any) -> None:
        if isinstance(output, tuple):
            block_outputs.append(output[0])
        else:
            block_outputs.append(output)

    for block in blocks:
        handles.append(block.register_forward_pre_hook(store_input, with_kwargs=True))
        handles.append(block.register_forward_hook(store_output))
    try:
        with torch.no_grad():
            model(**run.inputs)
    finally:
        for handle in handles:
            handle.remove()

    for layer in range(run.loaded.n_layers):
        assert torch.equal(block_inputs[layer], run.outputs.hidden_states[layer]), f"input of block {layer}"
    assert torch.equal(block_outputs[-1], run.final_residual)


@pytest.mark.parametrize("model_type", TRANSFORMED_TYPES)
def test_lens_without_transform_misses_logits(model_type: str) -> None:
    # Guards the table: the tiny configs set the logit transforms strongly enough that dropping
    # them changes the log-probabilities measurably.
    run = traced(model_type)
    spec = dataclasses.replace(
        run.loaded.spec, softcap_attr=None, logit_scale_attr=None, logit_divide_attr=None
    )
    plain_lens = LogitLens(dataclasses.replace(run.loaded, spec=spec))

    plain_log_probs = plain_lens.log_probs(run.final_residual)
    model_log_probs = torch.log_softmax(run.outputs.logits.float(), dim=-1)

    assert (plain_log_probs - model_log_probs).abs().max().item() > 1e-3


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_padding_keeps_valid_log_probs(model_type: str) -> None:
    # The second prompt is shorter, so its row in the batch is padded. Run alone, it has no padding.
    run = traced(model_type)
    model = run.loaded.model
    tokenizer = run.loaded.tokenizer
    mask = valid_positions(run)
    alone = dict(tokenizer(PROMPTS[1:], return_tensors="pt"))
    n_valid = int(mask[1].sum())

    assert alone["input_ids"].shape[1] == n_valid
    assert not bool(mask[1].all())

    with torch.no_grad(), run.lens.capture_final_residual():
        outputs = model(**alone, output_hidden_states=True)
    alone_states = [*outputs.hidden_states[:-1], run.lens.final_residual]
    batch_states = [*run.outputs.hidden_states[:-1], run.final_residual]

    for layer, (single, batched) in enumerate(zip(alone_states, batch_states)):
        single_log_probs = run.lens.log_probs(single[0])
        batched_log_probs = run.lens.log_probs(batched[1, :n_valid])
        difference = (single_log_probs - batched_log_probs).abs().max().item()
        assert difference < TOLERANCE, f"layer {layer}: max difference {difference:.2e}"


def test_final_residual_before_forward_raises() -> None:
    lens = LogitLens(traced("llama").loaded)

    with lens.capture_final_residual(), pytest.raises(TraceError, match="no final residual"):
        _ = lens.final_residual


def test_capture_hook_removed_on_exit() -> None:
    run = traced("llama")
    lens = LogitLens(run.loaded)
    norm = run.loaded.model.model.norm
    hooks_before = len(norm._forward_pre_hooks)

    with lens.capture_final_residual():
        assert len(norm._forward_pre_hooks) == hooks_before + 1

    assert len(norm._forward_pre_hooks) == hooks_before


def test_capture_nested_raises() -> None:
    lens = LogitLens(traced("llama").loaded)

    with lens.capture_final_residual(), pytest.raises(RuntimeError, match="already active"):
        with lens.capture_final_residual():
            pass


def test_opt_without_final_norm_captures_residual() -> None:
    # OPT configs with do_layer_norm_before=False build no final norm, so the lens takes the
    # residual at the input of project_out instead.
    from transformers import AutoModelForCausalLM

    config = TINY_CONFIGS["opt"]()
    config.do_layer_norm_before = False
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    _, tokenizer = build_tiny("opt")
    loaded = wrap_model(model, tokenizer)
    lens = LogitLens(loaded)
    inputs = tokenizer(PROMPTS[:1], return_tensors="pt")

    with torch.no_grad(), lens.capture_final_residual():
        outputs = model(**inputs)

    assert model.model.decoder.final_layer_norm is None
    assert lens.final_residual.shape[-1] == HIDDEN_SIZE
    difference = (lens.log_probs(lens.final_residual) - torch.log_softmax(outputs.logits, dim=-1)).abs().max()
    assert difference.item() < TOLERANCE


def test_lens_bfloat16_returns_float32() -> None:
    model, tokenizer = build_tiny("llama")
    model = model.to(torch.bfloat16)
    lens = LogitLens(wrap_model(model, tokenizer))
    inputs = tokenizer(PROMPTS[:1], return_tensors="pt")

    with torch.no_grad(), lens.capture_final_residual():
        outputs = model(**inputs)
    log_probs = lens.log_probs(lens.final_residual.float())

    assert log_probs.dtype == torch.float32
    assert (log_probs - torch.log_softmax(outputs.logits.float(), dim=-1)).abs().max().item() < 1e-2


# Tokenizer padding


def test_wrap_sets_pad_to_eos() -> None:
    model, tokenizer = build_tiny("gpt2")
    tokenizer.pad_token = None
    tokenizer.padding_side = "left"

    wrap_model(model, tokenizer)

    assert tokenizer.pad_token == "<eos>"
    assert tokenizer.padding_side == "right"


def test_wrap_sets_pad_to_unk() -> None:
    model, tokenizer = build_tiny("gpt2")
    tokenizer.pad_token = None
    tokenizer.eos_token = None

    wrap_model(model, tokenizer)

    assert tokenizer.pad_token == "<unk>"


# Devices and dtypes


def test_resolve_device_auto() -> None:
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}


def test_resolve_device_cpu() -> None:
    assert resolve_device("cpu") == torch.device("cpu")


def test_resolve_device_invalid_raises() -> None:
    with pytest.raises(SettingsError, match="'tpu'"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resolve_device_missing_cuda_raises() -> None:
    with pytest.raises(ModelLoadError, match="not available"):
        resolve_device("cuda")


def test_resolve_dtype_auto_cpu() -> None:
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32


def test_resolve_dtype_bfloat16() -> None:
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16


def test_resolve_dtype_invalid_raises() -> None:
    with pytest.raises(SettingsError, match="'float8'"):
        resolve_dtype("float8", torch.device("cpu"))


# load_model


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny("llama", tmp_path_factory.mktemp("tiny-llama"))


def copy_without(source: Path, target: Path, *skipped: str) -> Path:
    """Copy a model directory's files into ``target``, leaving out the named files."""
    target.mkdir()
    for path in source.iterdir():
        if path.name not in skipped:
            (target / path.name).write_bytes(path.read_bytes())
    return target


def test_load_missing_path_raises(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"

    with pytest.raises(ModelLoadError, match="model path not found"):
        load_model(str(missing), device="cpu")


def test_load_nested_name_not_hub_id(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="model path not found"):
        load_model("models/org/name", device="cpu")


def test_load_file_path_raises(tmp_path: Path) -> None:
    file_path = tmp_path / "weights.safetensors"
    file_path.write_bytes(b"")

    with pytest.raises(ModelLoadError, match="is a file"):
        load_model(str(file_path), device="cpu")


def test_load_dir_without_config_raises(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path), device="cpu")


def test_load_corrupt_config_raises(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json", encoding="utf-8")

    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_model(str(tmp_path), device="cpu")


def test_load_config_without_type_raises(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}), encoding="utf-8")

    with pytest.raises(ModelLoadError, match="no model_type"):
        load_model(str(tmp_path), device="cpu")


def test_load_bert_dir_raises(tmp_path: Path) -> None:
    from transformers import BertConfig

    BertConfig().save_pretrained(tmp_path)

    with pytest.raises(UnsupportedModelError, match="'bert'"):
        load_model(str(tmp_path), device="cpu")


def test_load_dir_without_weights_raises(llama_dir: Path, tmp_path: Path) -> None:
    directory = copy_without(llama_dir, tmp_path / "model", "model.safetensors")

    with pytest.raises(ModelLoadError, match="no weights"):
        load_model(str(directory), device="cpu")


def test_load_dir_without_tokenizer_raises(llama_dir: Path, tmp_path: Path) -> None:
    directory = copy_without(
        llama_dir, tmp_path / "model", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"
    )

    with pytest.raises(ModelLoadError, match="tokenizer"):
        load_model(str(directory), device="cpu")


def test_load_revision_with_local_dir_raises(llama_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="only to Hub ids"):
        load_model(str(llama_dir), revision="main", device="cpu")


def pickle_only_dir(llama_dir: Path, target: Path) -> Path:
    """Make a copy of the tiny Llama directory whose weights are a pickled state dict."""
    directory = copy_without(llama_dir, target, "model.safetensors")
    model, _ = build_tiny("llama")
    torch.save(model.state_dict(), directory / "pytorch_model.bin")
    return directory


def test_load_pickle_only_raises(llama_dir: Path, tmp_path: Path) -> None:
    directory = pickle_only_dir(llama_dir, tmp_path / "model")

    with pytest.raises(ModelLoadError, match="--allow-pickle"):
        load_model(str(directory), device="cpu")


def test_load_pickle_allowed(llama_dir: Path, tmp_path: Path) -> None:
    directory = pickle_only_dir(llama_dir, tmp_path / "model")
    reference, _ = build_tiny("llama")

    loaded = load_model(str(directory), device="cpu", dtype="float32", allow_pickle=True)

    for name, tensor in reference.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_load_round_trip(model_type: str, tmp_path: Path) -> None:
    directory = save_tiny(model_type, tmp_path / model_type)
    run = traced(model_type)

    loaded = load_model(str(directory), device="cpu", dtype="float32")
    with torch.no_grad():
        logits = loaded.model(**run.inputs).logits

    assert loaded.model_type == model_type
    assert loaded.source == str(directory)
    assert loaded.revision is None
    assert loaded.n_layers == N_LAYERS
    assert loaded.vocab_size == VOCAB_SIZE
    assert loaded.dtype == torch.float32
    assert not loaded.model.training
    assert loaded.tokenizer.pad_token == "<pad>"
    assert loaded.tokenizer.padding_side == "right"
    assert torch.allclose(logits, run.outputs.logits, atol=1e-6)


def test_load_dtype_bfloat16(llama_dir: Path) -> None:
    loaded = load_model(str(llama_dir), device="cpu", dtype="bfloat16")

    assert loaded.dtype == torch.bfloat16
    assert next(loaded.model.parameters()).dtype == torch.bfloat16


def test_load_hub_id_offline_raises() -> None:
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        pytest.skip("HF_HUB_OFFLINE is off, and tests must not reach the Hub")

    with pytest.raises(ModelLoadError, match="failed to read the config of spinal-test/no-such-model"):
        load_model("spinal-test/no-such-model", device="cpu")


# Accelerators (skipped on CPU-only machines)


def accelerator_devices() -> list[str]:
    devices = []
    if torch.cuda.is_available():
        devices.append("cuda")
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


@pytest.mark.gpu
@pytest.mark.parametrize(
    "device", accelerator_devices() or [pytest.param("none", marks=pytest.mark.skip("no CUDA or MPS device"))]
)
def test_load_on_accelerator(device: str, llama_dir: Path) -> None:
    loaded = load_model(str(llama_dir), device=device, dtype="float32")
    lens = LogitLens(loaded)
    inputs = loaded.tokenizer(PROMPTS, return_tensors="pt", padding=True).to(loaded.device)

    with torch.no_grad(), lens.capture_final_residual():
        outputs = loaded.model(**inputs)
    log_probs = lens.log_probs(lens.final_residual)

    assert loaded.device.type == device
    assert log_probs.device.type == device
    assert (log_probs - torch.log_softmax(outputs.logits.float(), dim=-1)).abs().max().item() < TOLERANCE
