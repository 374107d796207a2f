"""Schema-conformant synthetic runs for dashboard, figure and statistics tests.

A synthetic run has the tables and manifest that the engine writes, with numbers drawn from a
simple model: alpha rises and transport falls with depth, and an "aligned" run adds a chosen
shift inside the terminal band. Replicates of two runs with the same bootstrap seed share their
noise, as paired engine replicates do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from spinal.settings import BootstrapSettings, TraceSettings, canonical_hash

LAYER_CONVENTION = (
    "row 0 is the embedding output, rows 1..L are block outputs; row L is taken before the final norm"
)


@dataclass
class SyntheticRun:
    """An in-memory run with the same attributes as ``spinal.store.Run``."""

    run_id: str
    manifest: dict[str, Any]
    layers: pd.DataFrame
    prompts: pd.DataFrame
    prompt_layers: pd.DataFrame
    replicates: pd.DataFrame
    spectra: pd.DataFrame
    key: str = ""
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)


def make_run(
    label: str = "base",
    *,
    n_layers: int = 6,
    n_prompts: int = 12,
    replicates: int = 50,
    alpha_shift: float = 0.0,
    transport_shift: float = 0.0,
    band: tuple[float, float] = (2.0 / 3.0, 1.0),
    failed_layers: tuple[int, ...] = (),
    seed: int = 0,
    bootstrap_seed: int = 0,
    noise: float = 0.02,
    prompt_sha256: str | None = None,
    prompt_texts: tuple[str, ...] | None = None,
    dtype: str = "float32",
    model_source: str = "synthetic/model",
    series: dict[str, Any] | None = None,
    settings: TraceSettings | None = None,
) -> SyntheticRun:
    """Build one synthetic run.

    Args:
        label: Run label (may contain any text, markup included).
        n_layers: Number of blocks L; the tables have L + 1 rows per layer index.
        n_prompts: Number of prompts.
        replicates: Bootstrap replicates (0 turns bootstrap off).
        alpha_shift: Added to alpha on layers inside ``band``.
        transport_shift: Added to transport on layers inside ``band``.
        band: Relative-depth band that receives the shifts.
        failed_layers: Layers whose alpha fit reports ``too_few`` and carries no number.
        seed: Seed of this run's own noise.
        bootstrap_seed: Seed of the replicate noise shared by runs with equal bootstrap settings.
        noise: Standard deviation of the replicate noise.
        prompt_sha256: Prompt-set hash; computed from the texts when None.
        prompt_texts: Prompt texts; generated when None.
        dtype: Forward dtype recorded in the manifest.
        model_source: Model path or hub id recorded in the manifest.
        series: Training-series position recorded in the manifest.
        settings: Trace settings; the default settings with ``replicates`` and ``bootstrap_seed``
            when None.
    """
    if settings is None:
        settings = TraceSettings(bootstrap=BootstrapSettings(replicates=replicates, seed=bootstrap_seed))

    rng = np.random.default_rng(seed)
    layer = np.arange(n_layers + 1, dtype=np.int64)
    depth = layer / n_layers
    in_band = (depth >= band[0] - 1e-9) & (depth <= band[1] + 1e-9)

    alpha = 1.0 + 2.0 * depth**2 + rng.normal(0.0, 0.005, size=depth.shape) + alpha_shift * in_band
    transport = 0.3 * np.exp(-2.0 * depth) + rng.normal(0.0, 0.001, size=depth.shape) + transport_shift * in_band
    transport = np.abs(transport)
    transport[-1] = np.nan

    alpha_status = np.array(["ok"] * depth.size, dtype=object)
    alpha_warning = np.array([""] * depth.size, dtype=object)
    for failed in failed_layers:
        alpha_status[failed] = "too_few"
        alpha_warning[failed] = "fewer than 5 singular values in the fit window"
        alpha[failed] = np.nan

    texts = prompt_texts or tuple(f"Human: question number {index} about <b>topic</b> & more?\n\nAssistant:" for index in range(n_prompts))
    n_prompts = len(texts)

    replicate_table, alpha_ci, transport_ci = _replicates(
        alpha, transport, replicates, bootstrap_seed, seed, noise, settings.bootstrap.level
    )
    transport_status = np.array(["ok"] * depth.size, dtype=object)
    transport_status[-1] = "last_layer"

    layers = pd.DataFrame(
        {
            "layer": layer,
            "depth": depth,
            "n_tokens": np.full(depth.size, 40 * n_prompts, dtype=np.int64),
            "rank": np.full(depth.size, 64, dtype=np.int64),
            "alpha": alpha,
            "alpha_status": alpha_status.astype(str),
            "alpha_warning": alpha_warning.astype(str),
            "fit_k_min": np.full(depth.size, 4, dtype=np.int64),
            "fit_k_max": np.full(depth.size, 32, dtype=np.int64),
            "fit_points": np.full(depth.size, 29, dtype=np.int64),
            "fit_r2": np.where(alpha_status == "ok", 0.98, np.nan),
            "alpha_ci_low": np.where(alpha_status == "ok", alpha_ci[0], np.nan),
            "alpha_ci_high": np.where(alpha_status == "ok", alpha_ci[1], np.nan),
            "transport": transport,
            "transport_std": np.where(np.isfinite(transport), 0.01, np.nan),
            "transport_ci_low": transport_ci[0],
            "transport_ci_high": transport_ci[1],
            "transport_status": transport_status.astype(str),
        }
    )

    prompts = pd.DataFrame(
        {
            "prompt_index": np.arange(n_prompts, dtype=np.int64),
            "text": [text[:2000] for text in texts],
            "n_tokens": np.full(n_prompts, 41, dtype=np.int64),
            "n_used": np.full(n_prompts, 40, dtype=np.int64),
            "truncated": np.zeros(n_prompts, dtype=bool),
            "group": np.arange(n_prompts, dtype=np.int64) % settings.bootstrap.groups,
        }
    )

    prompt_rows = []
    for prompt_index in range(n_prompts):
        scale = 1.0 + 0.1 * rng.normal()
        for row, value in zip(layer, transport, strict=True):
            mean = float(value * scale) if np.isfinite(value) else float("nan")
            prompt_rows.append((prompt_index, int(row), 40, mean * 40, mean))
    prompt_layers = pd.DataFrame(
        prompt_rows, columns=["prompt_index", "layer", "n_used", "transport_sum", "transport_mean"]
    ).astype({"prompt_index": np.int64, "layer": np.int64, "n_used": np.int64})

    spectra = pd.DataFrame(
        [(int(row), k, float(k ** -np.nan_to_num(alpha[row], nan=1.0))) for row in layer for k in range(1, 9)],
        columns=["layer", "k", "sigma"],
    ).astype({"layer": np.int64, "k": np.int64})

    prompt_hash = prompt_sha256 or canonical_hash(list(texts))
    key = canonical_hash(
        {
            "label": label,
            "n_layers": n_layers,
            "seed": seed,
            "alpha_shift": alpha_shift,
            "transport_shift": transport_shift,
            "failed": list(failed_layers),
            "prompts": prompt_hash,
            "settings": settings.to_dict(),
            "source": model_source,
            "series": series,
            "dtype": dtype,
        }
    )
    manifest = _manifest(
        key, label, n_layers, settings, prompt_hash, n_prompts, dtype, model_source, series
    )
    tables = {
        "layers": layers,
        "prompts": prompts,
        "prompt_layers": prompt_layers,
        "replicates": replicate_table,
        "spectra": spectra,
    }
    return SyntheticRun(
        run_id=key[:16],
        manifest=manifest,
        layers=layers,
        prompts=prompts,
        prompt_layers=prompt_layers,
        replicates=replicate_table,
        spectra=spectra,
        key=key,
        tables=tables,
    )


def _replicates(
    alpha: np.ndarray, transport: np.ndarray, count: int, seed: int, own_seed: int, noise: float, level: float
) -> tuple[pd.DataFrame, tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    columns = {"replicate": np.int64, "layer": np.int64, "alpha": float, "transport": float}
    if count == 0:
        empty = pd.DataFrame({name: pd.Series(dtype=kind) for name, kind in columns.items()})
        nan = np.full(alpha.shape, np.nan)
        return empty, (nan, nan), (nan, nan)

    shared = np.random.default_rng(10_000 + seed)
    own = np.random.default_rng(20_000 + own_seed)
    shape = (count, alpha.size)
    alpha_draws = alpha[None, :] + shared.normal(0.0, noise, size=shape) + own.normal(0.0, noise / 2, size=shape)
    transport_draws = (
        transport[None, :] + shared.normal(0.0, noise / 10, size=shape) + own.normal(0.0, noise / 20, size=shape)
    )

    tail = (1.0 - level) / 2.0
    # Failed layers have NaN draws, and their quantiles are NaN as in an engine run.
    alpha_ci = np.quantile(alpha_draws, [tail, 1 - tail], axis=0)
    transport_ci = np.quantile(transport_draws, [tail, 1 - tail], axis=0)

    replicate_index, layer_index = np.meshgrid(np.arange(count), np.arange(alpha.size), indexing="ij")
    table = pd.DataFrame(
        {
            "replicate": replicate_index.ravel().astype(np.int64),
            "layer": layer_index.ravel().astype(np.int64),
            "alpha": alpha_draws.ravel(),
            "transport": transport_draws.ravel(),
        }
    )
    return table, (alpha_ci[0], alpha_ci[1]), (transport_ci[0], transport_ci[1])


def _manifest(
    key: str,
    label: str,
    n_layers: int,
    settings: TraceSettings,
    prompt_sha256: str,
    n_prompts: int,
    dtype: str,
    model_source: str,
    series: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "run_id": key[:16],
        "key": key,
        "label": label,
        "created": "2025-01-01T00:00:00+00:00",
        "layer_convention": LAYER_CONVENTION,
        "model": {
            "source": model_source,
            "revision": None,
            "model_type": "llama",
            "architecture": "LlamaForCausalLM",
            "n_layers": n_layers,
            "hidden_size": 64,
            "vocab_size": 512,
            "fingerprint": canonical_hash({"weights": model_source, "label": label}),
            "dtype": dtype,
            "device": "cpu",
            "trust_remote_code": False,
        },
        "prompts": {
            "source": "synthetic",
            "format": "text",
            "sha256": prompt_sha256,
            "n_prompts": n_prompts,
            "n_tokens": 41 * n_prompts,
            "n_truncated": 0,
            "max_prompts": None,
        },
        "settings": settings.to_dict(),
        "versions": {"spinal": "0.1.0", "python": "3.11", "torch": "2.13.0", "transformers": "5.25", "numpy": "2"},
        "timings": {"load_s": 0.1, "trace_s": 0.2, "total_s": 0.3},
        "series": series,
        "warnings": [],
    }


def write_run(store: Any, run: SyntheticRun) -> Any:
    """Write a synthetic run through ``TraceStore.write_run`` and return the stored ``Run``."""
    return store.write_run(run.key, run.manifest, run.tables)


def seed_store(store: Any, *, extra_runs: int = 0) -> dict[str, Any]:
    """Write a reference, an aligned target, a wider model and ``extra_runs`` more runs.

    Returns:
        Stored runs by role: ``reference``, ``target``, ``deeper`` and ``extra_<i>``.
    """
    runs = {
        "reference": make_run("base", failed_layers=(0,)),
        "target": make_run("dpo", seed=1, alpha_shift=0.4, transport_shift=-0.03, failed_layers=(0,)),
        "deeper": make_run("deeper-model", n_layers=9, seed=2, model_source="synthetic/deeper"),
    }
    for index in range(extra_runs):
        runs[f"extra_{index}"] = make_run(
            f"step-{index}", seed=100 + index, alpha_shift=0.02 * index, series={"name": "dpo", "step": index, "epoch": None}
        )

    return {role: write_run(store, run) for role, run in runs.items()}
