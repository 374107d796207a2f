"""Throughput and peak memory of the SPINAL trace against a plain forward and a naive trace.

Three variants run on one randomly initialised Llama-style model and one token set:

(a) forward: a plain forward pass with ``output_hidden_states=True``;
(b) spinal: ``spinal.engine.compute_trace`` (streamed Gram matrices, chunked lens), without
    bootstrap intervals; ``spinal_bootstrap`` adds the default 200 replicates, whose cost
    depends on hidden size and depth, not on the token count;
(c) naive: the straightforward approach, which keeps every layer's hidden states and full
    lens logits for all tokens, applies a full softmax, and runs a dense SVD of the stacked
    activations.

Each variant runs in its own subprocess, so that its peak memory is measured alone: peak
resident memory (ru_maxrss) above the level after model construction on CPU, and
``torch.cuda.max_memory_allocated`` on CUDA. The script then repeats (b) and (c) with 8x the
prompts, to show whether peak memory stays flat. It prints figures; it asserts nothing.

Usage:
    python benchmarks/bench_trace.py                  # CPU preset, a few minutes on 2 cores
    python benchmarks/bench_trace.py --preset 1b --device cuda --scales 1
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

PRESETS = {
    # A small model whose vocabulary is as large as a real one, so the lens cost shows.
    "cpu": {"hidden": 256, "layers": 8, "heads": 8, "intermediate": 688, "vocab": 16000, "prompts": 16, "tokens": 64},
    # About 1.1B parameters (TinyLlama shape), 16 prompts x 256 tokens = 4,096 tokens.
    "1b": {"hidden": 2048, "layers": 22, "heads": 32, "intermediate": 5632, "vocab": 32000, "prompts": 16, "tokens": 256},
}


def build_model(preset: dict, device: str, dtype: str):
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=preset["hidden"],
        num_hidden_layers=preset["layers"],
        num_attention_heads=preset["heads"],
        num_key_value_heads=preset["heads"],
        intermediate_size=preset["intermediate"],
        vocab_size=preset["vocab"],
        max_position_embeddings=max(512, preset["tokens"] + 8),
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config).to(device=device, dtype=getattr(torch, dtype)).eval()

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({f"w{index}": index for index in range(4, preset["vocab"])})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    return model, tokenizer


def make_prompts(preset: dict, scale: int):
    import numpy as np

    from spinal.prompts import PromptSet

    rng = np.random.default_rng(1)
    texts = []
    for _ in range(preset["prompts"] * scale):
        words = rng.integers(4, preset["vocab"], size=preset["tokens"])
        texts.append(" ".join(f"w{word}" for word in words))
    return PromptSet.from_texts(texts, source="benchmark", format="memory")


def peak_bytes(device: str) -> int:
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_variant(variant: str, preset_name: str, scale: int, device: str, dtype: str, batch_size: int) -> dict:
    import torch

    from spinal.adapters import LogitLens, wrap_model
    from spinal.engine import compute_trace
    from spinal.metrics import fisher_rao
    from spinal.settings import BootstrapSettings, TraceSettings

    preset = PRESETS[preset_name]
    model, tokenizer = build_model(preset, device, dtype)
    loaded = wrap_model(model, tokenizer, source=f"bench-{preset_name}")
    prompts = make_prompts(preset, scale)
    ids = [tokenizer(text)["input_ids"] for text in prompts.texts]
    n_tokens = sum(len(row) for row in ids)

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    baseline = peak_bytes(device) if device.startswith("cuda") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()

    with torch.no_grad():
        if variant == "forward":
            for first in range(0, len(ids), batch_size):
                batch = torch.tensor(ids[first : first + batch_size], device=device)
                model(input_ids=batch, output_hidden_states=True, use_cache=False)

        elif variant in ("spinal", "spinal_bootstrap"):
            replicates = 0 if variant == "spinal" else BootstrapSettings().replicates
            settings = TraceSettings(bootstrap=BootstrapSettings(replicates=replicates))
            compute_trace(loaded, prompts, settings=settings, batch_size=batch_size)

        elif variant == "naive":
            lens = LogitLens(loaded)
            states_per_row: list[list] = [[] for _ in range(loaded.n_layers + 1)]
            for first in range(0, len(ids), batch_size):
                batch = torch.tensor(ids[first : first + batch_size], device=device)
                with lens.capture_final_residual():
                    output = model(input_ids=batch, output_hidden_states=True, use_cache=False)
                    final = lens.final_residual
                states = list(output.hidden_states)
                states[-1] = final
                for row, state in enumerate(states):
                    states_per_row[row].append(state.reshape(-1, state.shape[-1]))

            stacked = [torch.cat(row).float() for row in states_per_row]
            probabilities = [torch.softmax(lens.logits(rows), dim=-1) for rows in stacked]
            for row in range(len(stacked) - 1):
                fisher_rao(probabilities[row].log(), probabilities[row + 1].log()).mean()
            for rows in stacked:
                torch.linalg.svdvals(rows - rows.mean(0))

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "variant": variant,
        "scale": scale,
        "tokens": n_tokens,
        "seconds": seconds,
        "tokens_per_s": n_tokens / seconds,
        "peak_mib": (peak_bytes(device) - baseline) / 1024**2,
    }


def unembedding_seconds(preset_name: str, device: str, dtype: str) -> float:
    """Time the lens alone (norm + unembedding + log-softmax) for every row and token, once."""
    import torch

    from spinal.adapters import LogitLens, wrap_model

    preset = PRESETS[preset_name]
    model, tokenizer = build_model(preset, device, dtype)
    lens = LogitLens(wrap_model(model, tokenizer))
    n_tokens = preset["prompts"] * preset["tokens"]
    hidden = torch.randn(n_tokens, preset["hidden"], device=device, dtype=getattr(torch, dtype))
    chunk = 1024

    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(preset["layers"] + 1):
            for first in range(0, n_tokens, chunk):
                lens.log_probs(hidden[first : first + chunk])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="Forward dtype (default: float32 on CPU, bfloat16 on CUDA).")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--scales", default="1,8", help="Prompt-count multipliers for the memory check (default 1,8).")
    parser.add_argument(
        "--scaled-variants",
        default="spinal,naive",
        help="Variants run at every scale (default spinal,naive; naive needs about 1 GiB per 1,000 tokens here).",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")

    if args.child:
        variant, scale = args.child.split(":")
        if variant == "unembed":
            print(json.dumps({"variant": "unembed", "seconds": unembedding_seconds(args.preset, args.device, dtype)}))
        else:
            print(json.dumps(run_variant(variant, args.preset, int(scale), args.device, dtype, args.batch_size)))
        return

    scales = [int(value) for value in args.scales.split(",")]
    jobs = [("forward", scales[0]), ("unembed", scales[0]), ("spinal_bootstrap", scales[0])]
    scaled_variants = args.scaled_variants.split(",")
    jobs += [(variant, scale) for scale in scales for variant in scaled_variants]

    preset = PRESETS[args.preset]
    print(f"preset {args.preset}: {preset}, device {args.device}, dtype {dtype}, batch {args.batch_size}")
    results = {}
    for variant, scale in jobs:
        command = [sys.executable, str(Path(__file__).resolve()), "--preset", args.preset, "--device", args.device,
                   "--dtype", dtype, "--batch-size", str(args.batch_size), "--child", f"{variant}:{scale}"]
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            print(f"{variant} x{scale}: failed\n{completed.stderr[-2000:]}")
            continue
        results[(variant, scale)] = json.loads(completed.stdout.strip().splitlines()[-1])

    print(f"\n{'variant':16} {'prompts':>7} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'peak MiB':>9}")
    for (variant, scale), result in results.items():
        if variant == "unembed":
            continue
        print(
            f"{variant:16} {preset['prompts'] * scale:>7} {result['tokens']:>7} {result['seconds']:>8.2f} "
            f"{result['tokens_per_s']:>9.0f} {result['peak_mib']:>9.0f}"
        )

    forward = results.get(("forward", scales[0]))
    unembed = results.get(("unembed", scales[0]))
    spinal = results.get(("spinal", scales[0]))
    if forward and unembed and spinal:
        budget = 1.5 * (forward["seconds"] + unembed["seconds"])
        print(
            f"\nlens alone (norm + unembedding + log-softmax, all rows): {unembed['seconds']:.2f} s; "
            f"target for spinal: <= 1.5 x (forward + lens) = {budget:.2f} s; measured {spinal['seconds']:.2f} s "
            f"({spinal['seconds'] / (forward['seconds'] + unembed['seconds']):.2f}x)"
        )
    if len(scales) > 1:
        for variant in ("spinal", "naive"):
            low, high = results.get((variant, scales[0])), results.get((variant, scales[-1]))
            if low and high:
                print(f"{variant}: peak memory x{scales[-1]} prompts / x{scales[0]} prompts = "
                      f"{high['peak_mib']:.0f} / {low['peak_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
