"""Reference-versus-target comparison of two traced runs, with paired bootstrap intervals.

The comparison works on the stored per-layer tables only (numpy and pandas, no torch, no
Streamlit). A delta is always ``target - reference`` on the same layer. Layers whose alpha fit
or transport did not succeed carry no delta (NaN), never a number.

Delta intervals pair the two runs' bootstrap replicates by replicate index. Pairing is valid
when both runs used the same bootstrap settings, because the engine then draws the same prompt
groups for replicate ``r`` in both runs. With other settings no delta interval is computed.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd

from spinal.errors import SettingsError, SpinalError

logger = logging.getLogger(__name__)

DEFAULT_BAND: tuple[float, float] = (2.0 / 3.0, 1.0)
"""Terminal band as relative depth (0 = embedding output, 1 = last block): the last third."""

Verdict = Literal["supported", "contradicted", "inconclusive", "no_intervals"]

BAND_EDGE_TOLERANCE = 0.005
"""Relative-depth tolerance at the band edges: half of 0.01, so a band edge written with two
decimals (0.67) still includes the layer at depth 2/3."""


class ComparisonError(SpinalError):
    """Two runs cannot be compared layer by layer."""


class RunLike(Protocol):
    """Run interface that a comparison reads; ``spinal.store.Run`` and test doubles both fit it."""

    run_id: str
    manifest: dict[str, Any]

    @property
    def layers(self) -> pd.DataFrame: ...

    @property
    def replicates(self) -> pd.DataFrame: ...


@dataclass(frozen=True)
class ComparisonSummary:
    """Headline numbers of a comparison, each with its interval where one exists.

    Band deltas are means over the band's layers of ``target - reference``. Intervals are
    percentile intervals of the same mean over paired replicates; NaN when unavailable.

    Attributes:
        band: Terminal band as relative depth ``(low, high)``, both ends included.
        level: Two-sided confidence level of every interval.
        band_layers_alpha: Layers in the band whose alpha fit succeeded in both runs.
        band_layers_transport: Layers in the band with a transport value in both runs.
        band_share_alpha: Share of the total absolute alpha delta (over all layers with a
            delta) that falls inside the band; NaN when the total is zero.
        band_share_transport: The same share for transport.
        band_alpha_ref: Mean reference alpha over ``band_layers_alpha``.
        band_transport_ref: Mean reference transport over ``band_layers_transport``.
        band_delta_alpha: Mean alpha delta over ``band_layers_alpha``.
        band_delta_alpha_low: Lower interval end of ``band_delta_alpha``.
        band_delta_alpha_high: Upper interval end of ``band_delta_alpha``.
        band_delta_transport: Mean transport delta over ``band_layers_transport``.
        band_delta_transport_low: Lower interval end of ``band_delta_transport``.
        band_delta_transport_high: Upper interval end of ``band_delta_transport``.
        n_replicates: Paired replicates behind the intervals (0 without intervals).
        verdict: ``supported`` when both band intervals exclude zero in the signature's
            direction (alpha up, transport down). ``contradicted`` when either interval
            excludes zero in the opposite direction. ``no_intervals`` when intervals are
            unavailable, and ``inconclusive`` otherwise.
        sentence: The verdict as one plain sentence with numbers and intervals.
    """

    band: tuple[float, float]
    level: float
    band_layers_alpha: tuple[int, ...]
    band_layers_transport: tuple[int, ...]
    band_share_alpha: float
    band_share_transport: float
    band_alpha_ref: float
    band_transport_ref: float
    band_delta_alpha: float
    band_delta_alpha_low: float
    band_delta_alpha_high: float
    band_delta_transport: float
    band_delta_transport_low: float
    band_delta_transport_high: float
    n_replicates: int
    verdict: Verdict
    sentence: str

    def to_dict(self) -> dict[str, Any]:
        """Return the summary as a JSON-ready dict (NaN stays NaN)."""
        return asdict(self)


@dataclass(frozen=True)
class Comparison:
    """Per-layer deltas of a target run against a reference run, and their summary.

    Attributes:
        ref_id: Run id of the reference (unaligned) checkpoint.
        target_id: Run id of the target (aligned) checkpoint.
        table: One row per layer with columns ``layer, depth, alpha_ref, alpha_target,
            delta_alpha, delta_alpha_low, delta_alpha_high, transport_ref, transport_target,
            delta_transport, delta_transport_low, delta_transport_high, in_band``.
        summary: Headline numbers and verdict.
        warnings: Differences between the runs that make the deltas harder to read (other
            prompt set, other settings, no pairable replicates), one sentence each.
    """

    ref_id: str
    target_id: str
    table: pd.DataFrame
    summary: ComparisonSummary
    warnings: tuple[str, ...] = field(default_factory=tuple)


def validate_band(band: tuple[float, float]) -> tuple[float, float]:
    """Return ``band`` as floats, or raise SettingsError when it is not a range inside [0, 1]."""
    low, high = float(band[0]), float(band[1])
    if not 0.0 <= low < high <= 1.0:
        raise SettingsError(
            f"terminal band ({low:g}, {high:g}) is invalid: use 0 <= low < high <= 1 in relative depth."
        )

    return low, high


def terminal_band_mask(depth: np.ndarray, band: tuple[float, float] = DEFAULT_BAND) -> np.ndarray:
    """Mark the rows whose relative depth lies in the terminal band.

    Args:
        depth: Relative depth per row, shape (n,), values in [0, 1].
        band: ``(low, high)`` in relative depth; both ends are included, with a tolerance of
            ``BAND_EDGE_TOLERANCE``.

    Returns:
        Boolean mask of shape (n,).
    """
    low, high = validate_band(band)
    values = np.asarray(depth, dtype=float)
    return (values >= low - BAND_EDGE_TOLERANCE) & (values <= high + BAND_EDGE_TOLERANCE)


def compare_runs(
    ref: RunLike,
    target: RunLike,
    band: tuple[float, float] = DEFAULT_BAND,
    level: float = 0.95,
) -> Comparison:
    """Compare a target run with a reference run layer by layer.

    Args:
        ref: Reference (unaligned) run.
        target: Target (aligned) run.
        band: Terminal band as relative depth.
        level: Two-sided confidence level of the intervals, in (0, 1).

    Returns:
        The per-layer table, headline summary and warnings.

    Raises:
        ComparisonError: The runs have different layer counts or layer rows.
        SettingsError: ``band`` or ``level`` is out of range.
    """
    band = validate_band(band)
    if not 0.0 < level < 1.0:
        raise SettingsError(f"confidence level {level} is invalid: use a value in (0, 1).")

    ref_layers = _sorted_layers(ref)
    target_layers = _sorted_layers(target)
    _check_same_layers(ref, target, ref_layers, target_layers)

    warnings = _compatibility_warnings(ref, target)

    table = _delta_table(ref_layers, target_layers, band)

    replicate_pairs, pairing_warning = _paired_replicates(ref, target, table["layer"].to_numpy())
    if pairing_warning:
        warnings.append(pairing_warning)

    _add_delta_intervals(table, replicate_pairs, level)

    summary = _summarise(table, replicate_pairs, band, level)
    return Comparison(
        ref_id=ref.run_id,
        target_id=target.run_id,
        table=table,
        summary=summary,
        warnings=tuple(warnings),
    )


def _sorted_layers(run: RunLike) -> pd.DataFrame:
    return run.layers.sort_values("layer").reset_index(drop=True)


def _n_layers(run: RunLike, layers: pd.DataFrame) -> int:
    model = run.manifest.get("model") or {}
    if model.get("n_layers") is not None:
        return int(model["n_layers"])

    return int(layers["layer"].max())


def _check_same_layers(
    ref: RunLike, target: RunLike, ref_layers: pd.DataFrame, target_layers: pd.DataFrame
) -> None:
    ref_count = _n_layers(ref, ref_layers)
    target_count = _n_layers(target, target_layers)
    if ref_count != target_count:
        raise ComparisonError(
            f"cannot compare run {ref.run_id} ({ref_count} layers) with run {target.run_id} "
            f"({target_count} layers): per-layer deltas need the same layer count, so pick two "
            "checkpoints of one architecture."
        )

    if not np.array_equal(ref_layers["layer"].to_numpy(), target_layers["layer"].to_numpy()):
        raise ComparisonError(
            f"cannot compare run {ref.run_id} with run {target.run_id}: their layer rows differ; "
            "retrace both with the current version of spinal."
        )


def _compatibility_warnings(ref: RunLike, target: RunLike) -> list[str]:
    warnings: list[str] = []

    ref_prompts = (ref.manifest.get("prompts") or {}).get("sha256")
    target_prompts = (target.manifest.get("prompts") or {}).get("sha256")
    if ref_prompts != target_prompts:
        warnings.append(
            "The runs used different prompt sets, so part of each delta may come from the prompts "
            "rather than the checkpoints."
        )

    differing = _differing_settings(ref.manifest.get("settings") or {}, target.manifest.get("settings") or {})
    if differing:
        warnings.append(
            "The runs used different trace settings (" + ", ".join(differing) + "), so deltas mix "
            "checkpoint and settings effects."
        )

    ref_dtype = (ref.manifest.get("model") or {}).get("dtype")
    target_dtype = (target.manifest.get("model") or {}).get("dtype")
    if ref_dtype != target_dtype:
        warnings.append(f"The runs used different forward dtypes ({ref_dtype} and {target_dtype}).")

    return warnings


def _differing_settings(left: dict[str, Any], right: dict[str, Any], prefix: str = "") -> list[str]:
    names: list[str] = []
    for name in sorted(set(left) | set(right)):
        left_value = left.get(name)
        right_value = right.get(name)
        if isinstance(left_value, dict) and isinstance(right_value, dict):
            names.extend(_differing_settings(left_value, right_value, f"{prefix}{name}."))
        elif left_value != right_value:
            names.append(f"{prefix}{name}")

    return names


def _delta_table(ref_layers: pd.DataFrame, target_layers: pd.DataFrame, band: tuple[float, float]) -> pd.DataFrame:
    alpha_ref = _usable_alpha(ref_layers)
    alpha_target = _usable_alpha(target_layers)
    transport_ref = _usable_transport(ref_layers)
    transport_target = _usable_transport(target_layers)
    depth = ref_layers["depth"].to_numpy(dtype=float)

    table = pd.DataFrame(
        {
            "layer": ref_layers["layer"].to_numpy(dtype=np.int64),
            "depth": depth,
            "alpha_ref": alpha_ref,
            "alpha_target": alpha_target,
            "delta_alpha": alpha_target - alpha_ref,
            "delta_alpha_low": np.nan,
            "delta_alpha_high": np.nan,
            "transport_ref": transport_ref,
            "transport_target": transport_target,
            "delta_transport": transport_target - transport_ref,
            "delta_transport_low": np.nan,
            "delta_transport_high": np.nan,
            "in_band": terminal_band_mask(depth, band),
        }
    )
    return table


def _usable_alpha(layers: pd.DataFrame) -> np.ndarray:
    values = layers["alpha"].to_numpy(dtype=float).copy()
    values[(layers["alpha_status"] != "ok").to_numpy()] = np.nan
    return values


def _usable_transport(layers: pd.DataFrame) -> np.ndarray:
    values = layers["transport"].to_numpy(dtype=float).copy()
    values[(layers["transport_status"] != "ok").to_numpy()] = np.nan
    return values


@dataclass(frozen=True)
class _ReplicatePairs:
    """Replicate matrices of shape (replicates, layers), columns in the table's layer order."""

    alpha_ref: np.ndarray
    alpha_target: np.ndarray
    transport_ref: np.ndarray
    transport_target: np.ndarray

    @property
    def count(self) -> int:
        return int(self.alpha_ref.shape[0])


def _paired_replicates(
    ref: RunLike, target: RunLike, layer_order: np.ndarray
) -> tuple[_ReplicatePairs | None, str | None]:
    ref_bootstrap = (ref.manifest.get("settings") or {}).get("bootstrap") or {}
    target_bootstrap = (target.manifest.get("settings") or {}).get("bootstrap") or {}
    if int(ref_bootstrap.get("replicates", 0)) == 0 or int(target_bootstrap.get("replicates", 0)) == 0:
        return None, "Bootstrap is off in at least one run, so no delta has an interval."

    used_ref = ref.manifest.get("bootstrap") or {}
    used_target = target.manifest.get("bootstrap") or {}
    if _pairing_fields(ref_bootstrap) != _pairing_fields(target_bootstrap) or _used_groups(used_ref) != _used_groups(
        used_target
    ):
        return None, (
            "The runs used different bootstrap settings, so their replicates do not pair and no "
            "delta has an interval; retrace with equal bootstrap settings."
        )

    ref_matrices = _replicate_matrices(ref.replicates, layer_order)
    target_matrices = _replicate_matrices(target.replicates, layer_order)
    if ref_matrices is None or target_matrices is None:
        return None, "At least one run stored no bootstrap replicates, so no delta has an interval."

    count = min(ref_matrices[0].shape[0], target_matrices[0].shape[0])
    pairs = _ReplicatePairs(
        alpha_ref=ref_matrices[0][:count],
        alpha_target=target_matrices[0][:count],
        transport_ref=ref_matrices[1][:count],
        transport_target=target_matrices[1][:count],
    )
    return pairs, None


def _pairing_fields(bootstrap: dict[str, Any]) -> dict[str, Any]:
    # The memory cap and level do not change the draws; groups, seed and count do.
    return {name: bootstrap.get(name) for name in ("replicates", "groups", "seed")}


def _used_groups(used: dict[str, Any]) -> tuple[Any, Any]:
    # The engine caps the group count by the prompt count and by memory. Replicates pair only
    # when both runs drew from the same number of groups.
    return used.get("transport_groups"), used.get("alpha_groups")


def _replicate_matrices(replicates: pd.DataFrame, layer_order: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    if replicates is None or replicates.empty:
        return None

    alpha = replicates.pivot(index="replicate", columns="layer", values="alpha")
    transport = replicates.pivot(index="replicate", columns="layer", values="transport")
    alpha = alpha.reindex(columns=layer_order).sort_index()
    transport = transport.reindex(columns=layer_order).sort_index()
    return alpha.to_numpy(dtype=float), transport.to_numpy(dtype=float)


def _percentile_interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    finite = samples[np.isfinite(samples)]
    if finite.size < 2:
        return float("nan"), float("nan")

    tail = (1.0 - level) / 2.0
    low, high = np.quantile(finite, [tail, 1.0 - tail])
    return float(low), float(high)


def _add_delta_intervals(table: pd.DataFrame, pairs: _ReplicatePairs | None, level: float) -> None:
    if pairs is None:
        return

    alpha_deltas = pairs.alpha_target - pairs.alpha_ref
    transport_deltas = pairs.transport_target - pairs.transport_ref

    for column in range(len(table)):
        if np.isfinite(table.at[column, "delta_alpha"]):
            low, high = _percentile_interval(alpha_deltas[:, column], level)
            table.at[column, "delta_alpha_low"] = low
            table.at[column, "delta_alpha_high"] = high

        if np.isfinite(table.at[column, "delta_transport"]):
            low, high = _percentile_interval(transport_deltas[:, column], level)
            table.at[column, "delta_transport_low"] = low
            table.at[column, "delta_transport_high"] = high


def _band_share(delta: np.ndarray, in_band: np.ndarray) -> float:
    magnitude = np.abs(delta)
    finite = np.isfinite(magnitude)
    total = float(magnitude[finite].sum())
    if total == 0.0:
        return float("nan")

    return float(magnitude[finite & in_band].sum()) / total


def _band_mean_interval(
    ref_samples: np.ndarray, target_samples: np.ndarray, columns: np.ndarray, level: float
) -> tuple[float, float]:
    if columns.size == 0:
        return float("nan"), float("nan")

    deltas = target_samples[:, columns] - ref_samples[:, columns]
    complete = np.isfinite(deltas).all(axis=1)
    # NOTE: a replicate whose fit failed on any band layer is dropped, which can narrow the
    # interval when failures correlate with the draw. The count used is not reported per metric.
    return _percentile_interval(deltas[complete].mean(axis=1), level)


def _summarise(
    table: pd.DataFrame, pairs: _ReplicatePairs | None, band: tuple[float, float], level: float
) -> ComparisonSummary:
    in_band = table["in_band"].to_numpy(dtype=bool)
    delta_alpha = table["delta_alpha"].to_numpy(dtype=float)
    delta_transport = table["delta_transport"].to_numpy(dtype=float)

    alpha_columns = np.flatnonzero(in_band & np.isfinite(delta_alpha))
    transport_columns = np.flatnonzero(in_band & np.isfinite(delta_transport))

    alpha_interval = (float("nan"), float("nan"))
    transport_interval = (float("nan"), float("nan"))
    if pairs is not None:
        alpha_interval = _band_mean_interval(pairs.alpha_ref, pairs.alpha_target, alpha_columns, level)
        transport_interval = _band_mean_interval(
            pairs.transport_ref, pairs.transport_target, transport_columns, level
        )

    values = {
        "band_delta_alpha": _mean(delta_alpha, alpha_columns),
        "band_delta_transport": _mean(delta_transport, transport_columns),
        "band_alpha_ref": _mean(table["alpha_ref"].to_numpy(dtype=float), alpha_columns),
        "band_transport_ref": _mean(table["transport_ref"].to_numpy(dtype=float), transport_columns),
    }
    band_has_layers = alpha_columns.size > 0 and transport_columns.size > 0
    verdict = _verdict(pairs, alpha_interval, transport_interval, band_has_layers)
    layers = table["layer"].to_numpy()

    summary = ComparisonSummary(
        band=band,
        level=level,
        band_layers_alpha=tuple(int(layer) for layer in layers[alpha_columns]),
        band_layers_transport=tuple(int(layer) for layer in layers[transport_columns]),
        band_share_alpha=_band_share(delta_alpha, in_band),
        band_share_transport=_band_share(delta_transport, in_band),
        band_alpha_ref=values["band_alpha_ref"],
        band_transport_ref=values["band_transport_ref"],
        band_delta_alpha=values["band_delta_alpha"],
        band_delta_alpha_low=alpha_interval[0],
        band_delta_alpha_high=alpha_interval[1],
        band_delta_transport=values["band_delta_transport"],
        band_delta_transport_low=transport_interval[0],
        band_delta_transport_high=transport_interval[1],
        n_replicates=0 if pairs is None else pairs.count,
        verdict=verdict,
        sentence="",
    )
    return _with_sentence(summary)


def _mean(values: np.ndarray, columns: np.ndarray) -> float:
    if columns.size == 0:
        return float("nan")

    return float(values[columns].mean())


def _verdict(
    pairs: _ReplicatePairs | None,
    alpha_interval: tuple[float, float],
    transport_interval: tuple[float, float],
    band_has_layers: bool,
) -> Verdict:
    if pairs is None:
        return "no_intervals"

    if not band_has_layers:
        return "inconclusive"

    if not all(np.isfinite(alpha_interval + transport_interval)):
        return "no_intervals"

    alpha_low, alpha_high = alpha_interval
    transport_low, transport_high = transport_interval
    if alpha_high < 0.0 or transport_low > 0.0:
        return "contradicted"

    if alpha_low > 0.0 and transport_high < 0.0:
        return "supported"

    return "inconclusive"


def format_interval(value: float, low: float, high: float, digits: int = 3) -> str:
    """Format a signed estimate with its interval, e.g. ``+0.120 [+0.050, +0.190]``."""
    if not np.isfinite(value):
        return "n/a"

    text = f"{value:+.{digits}f}"
    if np.isfinite(low) and np.isfinite(high):
        text += f" [{low:+.{digits}f}, {high:+.{digits}f}]"

    return text


def _with_sentence(summary: ComparisonSummary) -> ComparisonSummary:
    band_text = f"terminal band (depth {summary.band[0]:.2f} to {summary.band[1]:.2f})"
    alpha_text = format_interval(summary.band_delta_alpha, summary.band_delta_alpha_low, summary.band_delta_alpha_high)
    transport_text = format_interval(
        summary.band_delta_transport, summary.band_delta_transport_low, summary.band_delta_transport_high, digits=4
    )
    numbers = f"alpha changes by {alpha_text} and transport by {transport_text}"
    interval_note = f"{summary.level:.0%} paired bootstrap intervals over {summary.n_replicates} replicates"
    band_is_empty = not summary.band_layers_alpha or not summary.band_layers_transport

    if summary.verdict == "supported":
        sentence = (
            f"Signature supported: in the {band_text}, {numbers} (target minus reference, "
            f"{interval_note}); both intervals exclude zero in the expected direction."
        )
    elif summary.verdict == "contradicted":
        sentence = (
            f"Signature contradicted: in the {band_text}, {numbers} (target minus reference, "
            f"{interval_note}); at least one interval excludes zero in the opposite direction."
        )
    elif summary.verdict == "inconclusive" and band_is_empty:
        sentence = (
            f"Signature not established: the {band_text} contains no layer with both a fitted alpha "
            "and a transport value in the two runs; move the band start lower (--band in the CLI, the sidebar in the dashboard)."
        )
    elif summary.verdict == "inconclusive":
        sentence = (
            f"Signature not established: in the {band_text}, {numbers} (target minus reference, "
            f"{interval_note}); at least one interval includes zero."
        )
    else:
        sentence = (
            f"No intervals: in the {band_text}, {numbers} (target minus reference, point "
            "estimates only), which cannot establish or rule out the signature."
        )

    return replace(summary, sentence=sentence)
