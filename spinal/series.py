"""Training series: stored runs of one training job ordered by step, and their terminal-band values.

A run belongs to a series when its manifest carries ``series = {"name", "step", "epoch"}``
(written by ``spinal.callbacks.SpinalCallback``, the demo build and the tracing of checkpoint
folders). Runs are grouped by series name and ordered by step. Only runs with the same layer
count, prompt-set hash, trace settings and forward dtype form one series, because values from
other settings are not comparable across steps. A name whose runs differ in any of these is
split into one series per variant, and each part carries a warning that names what differs.

Terminal-band values, per run and metric (``alpha``, ``transport``):

- value: mean over the band's layers whose value is usable (status ``ok``);
- interval: the same mean in every bootstrap replicate of the run (same layers), and the
  percentile interval of those means at the run's bootstrap level;
- bootstrap sd: the standard deviation (ddof 1) of those replicate means.

Departure marker (a reading aid, not a test or a verdict). For each metric, with steps in
order and only steps that have a band value counted:

- the running baseline at step t is the mean of the band values of all earlier steps, and
  exists when there are at least ``min_baseline`` (default 2) earlier steps;
- the scale at step t is ``max(s_t, sd of the earlier values)``, where s_t is the bootstrap sd
  of the band mean at step t (left out when the run has no intervals) and the sd of the
  earlier values uses ddof 1;
- step t departs when ``|v_t - baseline_t| > k * scale_t``, with k = 3 by default;
- the marker is the first departing step. A series with fewer than ``min_baseline + 1``
  steps with a value gets no marker and a reason.

Numpy and pandas only: no torch and no Streamlit.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd

from spinal.errors import SettingsError
from spinal.settings import canonical_hash
from spinal.stats import terminal_band_mask, validate_band

logger = logging.getLogger(__name__)

METRICS: tuple[str, str] = ("alpha", "transport")

DEFAULT_K = 3.0
"""Default multiple of the scale that a band value must exceed to depart from its baseline."""

DEFAULT_MIN_BASELINE = 2
"""Default number of earlier steps the running baseline needs (2, so their sd exists)."""

DEFAULT_LEVEL = 0.95
"""Bootstrap level used when a run's manifest records none."""

OnsetStatus = Literal["departs", "no_departure", "too_short"]

BAND_COLUMNS = (
    "step",
    "epoch",
    "run_id",
    "label",
    "metric",
    "value",
    "low",
    "high",
    "boot_sd",
    "level",
    "n_replicates",
    "band_layers",
    "interval_note",
)
"""Columns of the table that ``band_values`` returns, one row per (run, metric)."""


class HasManifest(Protocol):
    """Anything with a run id and a parsed manifest: ``RunInfo``, ``Run`` or a test double."""

    run_id: str
    manifest: dict[str, Any]


class RunTables(HasManifest, Protocol):
    """A run with the ``layers`` and ``replicates`` tables of ``spinal.store.Run``."""

    @property
    def layers(self) -> pd.DataFrame: ...

    @property
    def replicates(self) -> pd.DataFrame: ...


# ---------------------------------------------------------------------------------------------
# Finding series in a store


@dataclass(frozen=True)
class Series:
    """Runs of one training series with comparable settings, in step order.

    Attributes:
        key: Identifier of the series in this store: the series name, or the name followed by
            ``~`` and 8 hex digits of the variant hash when runs with that name differ in layer
            count, prompt set, settings or dtype.
        name: Series name from the run manifests.
        variant: What sets this part apart from other series of the same name (for example
            ``12 layers, prompt set 1a2b3c4d``); empty when the name is not split.
        run_ids: Runs in step order.
        steps: Training step of each run.
        epochs: Training epoch of each run; None where the manifest has none.
        labels: Display label of each run.
        n_layers: Number of blocks L shared by the runs; None when the manifests lack it.
        prompt_sha256: Prompt-set hash shared by the runs.
        newest: Latest ``created`` time among the runs (ISO 8601 UTC).
        warnings: Problems found while grouping, one sentence each.
    """

    key: str
    name: str
    variant: str
    run_ids: tuple[str, ...]
    steps: tuple[int, ...]
    epochs: tuple[float | None, ...]
    labels: tuple[str, ...]
    n_layers: int | None
    prompt_sha256: str | None
    newest: str
    warnings: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        """Name, variant and step range for a select box."""
        span = f"step {self.steps[0]}" if len(self.steps) == 1 else f"{len(self.steps)} steps, {self.steps[0]} to {self.steps[-1]}"
        variant = f" [{self.variant}]" if self.variant else ""
        return f"{self.name}{variant} ({span})"


@dataclass(frozen=True)
class _Member:
    run_id: str
    step: int
    epoch: float | None
    label: str
    created: str
    variant: tuple[Any, ...]


def series_position(manifest: Mapping[str, Any]) -> tuple[str, int, float | None] | None:
    """Return ``(name, step, epoch)`` from a manifest, or None when the run is in no series.

    A series entry without a non-empty name, or with a step that is not a non-negative
    integer, counts as no series.
    """
    series = manifest.get("series")
    if not isinstance(series, Mapping):
        return None

    name = series.get("name")
    step = series.get("step")
    if not isinstance(name, str) or not name.strip():
        return None

    if isinstance(step, bool) or not isinstance(step, (int, float)) or not float(step).is_integer() or step < 0:
        return None

    epoch = series.get("epoch")
    epoch_value = float(epoch) if isinstance(epoch, (int, float)) and not isinstance(epoch, bool) else None
    return name.strip(), int(step), epoch_value


def _variant_of(manifest: Mapping[str, Any]) -> tuple[Any, ...]:
    model = manifest.get("model") if isinstance(manifest.get("model"), Mapping) else {}
    prompts = manifest.get("prompts") if isinstance(manifest.get("prompts"), Mapping) else {}
    settings = manifest.get("settings") if isinstance(manifest.get("settings"), Mapping) else {}
    return (model.get("n_layers"), prompts.get("sha256"), canonical_hash(settings), model.get("dtype"))


def _label_of(manifest: Mapping[str, Any], run_id: str) -> str:
    label = manifest.get("label")
    if isinstance(label, str) and label.strip():
        return label.strip()

    return run_id


def find_series(runs: Iterable[HasManifest]) -> list[Series]:
    """Group runs into training series by manifest, newest series first.

    Args:
        runs: Stored runs (only ``run_id`` and ``manifest`` are read, so ``RunInfo`` from
            ``TraceStore.list_runs`` is enough and no table is loaded).

    Returns:
        One ``Series`` per series name and variant, ordered by the latest ``created`` time of
        its runs, newest first. A step that occurs twice in one series keeps the newest run.
    """
    by_name: dict[str, list[_Member]] = {}
    for run in runs:
        position = series_position(run.manifest)
        if position is None:
            continue

        name, step, epoch = position
        by_name.setdefault(name, []).append(
            _Member(
                run_id=run.run_id,
                step=step,
                epoch=epoch,
                label=_label_of(run.manifest, run.run_id),
                created=str(run.manifest.get("created", "")),
                variant=_variant_of(run.manifest),
            )
        )

    found: list[Series] = []
    for name, members in by_name.items():
        found.extend(_split_by_variant(name, members))

    return sorted(found, key=lambda series: (series.newest, series.key), reverse=True)


_VARIANT_ASPECTS = ("layer count", "prompt set", "trace settings", "forward dtype")


def _split_by_variant(name: str, members: list[_Member]) -> list[Series]:
    variants: dict[tuple[Any, ...], list[_Member]] = {}
    for member in members:
        variants.setdefault(member.variant, []).append(member)

    if len(variants) == 1:
        return [_build_series(name, name, "", members, [])]

    differing = [
        index for index in range(len(_VARIANT_ASPECTS)) if len({variant[index] for variant in variants}) > 1
    ]
    aspects = ", ".join(_VARIANT_ASPECTS[index] for index in differing)
    split_warning = (
        f"Runs of series '{name}' differ in {aspects}, so they are shown as {len(variants)} separate series; "
        "steps are compared only within one."
    )

    parts = []
    for variant, group in variants.items():
        digest = canonical_hash(list(variant))[:8]
        parts.append(_build_series(f"{name}~{digest}", name, _describe_variant(variant, differing), group, [split_warning]))

    return parts


def _describe_variant(variant: tuple[Any, ...], differing: Sequence[int]) -> str:
    n_layers, prompt_sha256, settings_hash, dtype = variant
    texts = {
        0: f"{n_layers} layers",
        1: f"prompt set {str(prompt_sha256)[:8]}",
        2: f"settings {settings_hash[:8]}",
        3: f"dtype {dtype}",
    }
    return ", ".join(texts[index] for index in differing)


def _build_series(key: str, name: str, variant: str, members: list[_Member], warnings: list[str]) -> Series:
    by_step: dict[int, _Member] = {}
    for member in sorted(members, key=lambda member: (member.created, member.run_id)):
        if member.step in by_step:
            warnings.append(
                f"Series '{name}' has more than one run at step {member.step}; the newest "
                f"({member.run_id}) is shown and {by_step[member.step].run_id} is left out."
            )
        by_step[member.step] = member

    ordered = [by_step[step] for step in sorted(by_step)]
    n_layers, prompt_sha256 = ordered[0].variant[0], ordered[0].variant[1]
    return Series(
        key=key,
        name=name,
        variant=variant,
        run_ids=tuple(member.run_id for member in ordered),
        steps=tuple(member.step for member in ordered),
        epochs=tuple(member.epoch for member in ordered),
        labels=tuple(member.label for member in ordered),
        n_layers=None if n_layers is None else int(n_layers),
        prompt_sha256=prompt_sha256,
        newest=max(member.created for member in members),
        warnings=tuple(warnings),
    )


def default_series(series: Sequence[Series], selected_run_ids: Iterable[str] = ()) -> Series | None:
    """Pick the series to show first: the one containing the most selected runs, else the newest.

    Args:
        series: Series as ``find_series`` returns them (newest first).
        selected_run_ids: Runs selected elsewhere, for example in the dashboard sidebar.
    """
    if not series:
        return None

    selected = set(selected_run_ids)
    overlaps = [len(selected.intersection(item.run_ids)) for item in series]
    best = max(overlaps)
    if best == 0:
        return series[0]

    return series[overlaps.index(best)]


# ---------------------------------------------------------------------------------------------
# Terminal-band values per step


def band_values(
    runs: Sequence[RunTables],
    steps: Sequence[int],
    band: tuple[float, float],
    epochs: Sequence[float | None] | None = None,
) -> pd.DataFrame:
    """Compute each run's terminal-band mean of alpha and transport, with bootstrap intervals.

    Args:
        runs: Runs of one series in step order.
        steps: Training step of each run, shape (n_runs,).
        band: Terminal band as relative depth ``(low, high)``.
        epochs: Training epoch of each run; None fills the column with NaN.

    Returns:
        A table with ``BAND_COLUMNS``, one row per (run, metric), runs in the given order and
        ``alpha`` before ``transport``. ``value`` is NaN when the band has no usable layer.
        ``low``, ``high`` and ``boot_sd`` are NaN when the run has no intervals, and
        ``interval_note`` then gives the reason (empty otherwise).

    Raises:
        SettingsError: ``band`` is not a range inside [0, 1].
        ValueError: ``runs`` and ``steps`` (or ``epochs``) differ in length.
    """
    band = validate_band(band)
    if len(runs) != len(steps) or (epochs is not None and len(epochs) != len(runs)):
        raise ValueError(f"got {len(runs)} runs and {len(steps)} steps: pass one step (and epoch) per run.")

    rows = []
    for position, (run, step) in enumerate(zip(runs, steps, strict=True)):
        epoch = epochs[position] if epochs is not None else None
        rows.extend(_run_band_rows(run, int(step), epoch, band))

    return pd.DataFrame(rows, columns=list(BAND_COLUMNS))


def _run_band_rows(run: RunTables, step: int, epoch: float | None, band: tuple[float, float]) -> list[dict[str, Any]]:
    layers = run.layers.sort_values("layer")
    in_band = terminal_band_mask(layers["depth"].to_numpy(dtype=float), band)
    bootstrap = (run.manifest.get("settings") or {}).get("bootstrap") or {}
    level = float(bootstrap.get("level", DEFAULT_LEVEL))
    replicates_requested = int(bootstrap.get("replicates", 0) or 0)

    rows = []
    for metric in METRICS:
        status = layers[f"{metric}_status"].to_numpy()
        values = layers[metric].to_numpy(dtype=float)
        usable = in_band & (status == "ok") & np.isfinite(values)
        band_layers = layers["layer"].to_numpy()[usable]
        value = float(values[usable].mean()) if usable.any() else math.nan

        if not usable.any():
            interval = _Interval(note="no layer of the band has a usable value")
        elif replicates_requested == 0:
            interval = _Interval(note="bootstrap off in this run")
        else:
            interval = _band_interval(run.replicates, metric, band_layers, level)

        rows.append(
            {
                "step": step,
                "epoch": math.nan if epoch is None else float(epoch),
                "run_id": run.run_id,
                "label": _label_of(run.manifest, run.run_id),
                "metric": metric,
                "value": value,
                "low": interval.low,
                "high": interval.high,
                "boot_sd": interval.sd,
                "level": level,
                "n_replicates": interval.count,
                "band_layers": ", ".join(str(int(layer)) for layer in band_layers),
                "interval_note": interval.note,
            }
        )

    return rows


@dataclass(frozen=True)
class _Interval:
    low: float = math.nan
    high: float = math.nan
    sd: float = math.nan
    count: int = 0
    note: str = ""


def _band_interval(replicates: pd.DataFrame | None, metric: str, band_layers: np.ndarray, level: float) -> _Interval:
    if replicates is None or replicates.empty:
        return _Interval(note="no bootstrap replicates stored")

    matrix = replicates.pivot(index="replicate", columns="layer", values=metric).reindex(columns=band_layers)
    samples = matrix.to_numpy(dtype=float)
    # A replicate without a value on any band layer is left out, as in spinal.stats.
    complete = np.isfinite(samples).all(axis=1)
    means = samples[complete].mean(axis=1)
    if means.size < 2:
        return _Interval(note=f"fewer than 2 bootstrap replicates have {metric} on every band layer")

    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return _Interval(low=float(low), high=float(high), sd=float(means.std(ddof=1)), count=int(means.size))


# ---------------------------------------------------------------------------------------------
# Departure from the running baseline


@dataclass(frozen=True)
class Onset:
    """First step whose band value departs from the running baseline of earlier steps.

    Attributes:
        status: ``departs`` when a step departs, ``no_departure`` when none does, and
            ``too_short`` when too few steps have a value for any baseline.
        step: The first departing step; None unless ``status`` is ``departs``.
        value: Band value at ``step``.
        baseline: Running baseline at ``step``.
        threshold: ``k * scale`` at ``step``.
        k: Multiple of the scale used.
        min_baseline: Earlier steps the baseline needed.
        n_values: Steps with a value (NaN values are skipped).
        steps: Every step passed in, shape (n,).
        baselines: Running baseline per step, shape (n,); NaN where none was formed.
        thresholds: ``k * scale`` per step, shape (n,); NaN where no baseline was formed.
        message: The result as one plain sentence.
    """

    status: OnsetStatus
    step: int | None
    value: float
    baseline: float
    threshold: float
    k: float
    min_baseline: int
    n_values: int
    steps: np.ndarray
    baselines: np.ndarray
    thresholds: np.ndarray
    message: str


def validate_onset_settings(k: float, min_baseline: int) -> None:
    """Raise SettingsError when ``k`` or ``min_baseline`` cannot define a departure."""
    if not math.isfinite(k) or k <= 0.0:
        raise SettingsError(f"departure threshold k={k} is invalid: use a positive number such as {DEFAULT_K:g}.")

    if min_baseline < 2:
        raise SettingsError(
            f"min_baseline={min_baseline} is invalid: use 2 or more, because the sd of earlier values needs two."
        )


def find_onset(
    steps: Sequence[int] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    boot_sd: Sequence[float] | np.ndarray | None = None,
    *,
    k: float = DEFAULT_K,
    min_baseline: int = DEFAULT_MIN_BASELINE,
) -> Onset:
    """Find the first step whose value departs from the mean of all earlier steps.

    Steps whose value is NaN are skipped: they neither enter a baseline nor depart. The rule
    is given in the module docstring.

    Args:
        steps: Training steps, strictly increasing, shape (n,).
        values: Band value per step, shape (n,).
        boot_sd: Bootstrap standard deviation of each value, shape (n,); NaN or None where a
            run has no intervals, and then only the sd of earlier values sets the scale.
        k: Multiple of the scale that the distance to the baseline must exceed.
        min_baseline: Earlier steps with a value needed to form a baseline (at least 2).

    Returns:
        The first departing step, or the reason there is none, with the baseline and threshold
        of every step for drawing.

    Raises:
        SettingsError: ``k`` is not positive or ``min_baseline`` is below 2.
        ValueError: The arrays differ in length or the steps are not strictly increasing.
    """
    validate_onset_settings(k, min_baseline)
    step_array = np.asarray(steps, dtype=np.int64)
    value_array = np.asarray(values, dtype=float)
    sd_array = np.full(value_array.shape, np.nan) if boot_sd is None else np.asarray(boot_sd, dtype=float)
    if not step_array.shape == value_array.shape == sd_array.shape or step_array.ndim != 1:
        raise ValueError(
            f"steps {step_array.shape}, values {value_array.shape} and boot_sd {sd_array.shape} must be 1-D of one length."
        )

    if np.any(np.diff(step_array) <= 0):
        raise ValueError(f"steps {step_array.tolist()} are not strictly increasing: sort the runs by step first.")

    baselines = np.full(value_array.shape, np.nan)
    thresholds = np.full(value_array.shape, np.nan)
    usable = np.flatnonzero(np.isfinite(value_array))
    common = {
        "k": k,
        "min_baseline": min_baseline,
        "n_values": int(usable.size),
        "steps": step_array,
        "baselines": baselines,
        "thresholds": thresholds,
    }

    if usable.size < min_baseline + 1:
        message = (
            f"Too short for a departure marker: it needs at least {min_baseline + 1} steps with a value "
            f"({min_baseline} for the running baseline), and {usable.size} have one."
        )
        return Onset(
            status="too_short", step=None, value=math.nan, baseline=math.nan, threshold=math.nan, message=message, **common
        )

    first: int | None = None
    for position in range(min_baseline, usable.size):
        index = usable[position]
        earlier = value_array[usable[:position]]
        own_sd = float(sd_array[index]) if math.isfinite(sd_array[index]) else 0.0
        baselines[index] = earlier.mean()
        # NOTE: with identical earlier values and no interval at step t the scale is 0, so any
        # change at all departs.
        thresholds[index] = k * max(own_sd, float(earlier.std(ddof=1)))
        if first is None and abs(value_array[index] - baselines[index]) > thresholds[index]:
            first = int(index)

    if first is None:
        message = f"No departure: no step is more than {k:g} x scale away from its running baseline."
        return Onset(
            status="no_departure", step=None, value=math.nan, baseline=math.nan, threshold=math.nan, message=message, **common
        )

    step, value, baseline, threshold = int(step_array[first]), float(value_array[first]), float(baselines[first]), float(thresholds[first])
    message = (
        f"Departs from its running baseline at step {step}: "
        f"|{value:.4g} - {baseline:.4g}| = {abs(value - baseline):.4g} > {k:g} x scale = {threshold:.4g}."
    )
    return Onset(status="departs", step=step, value=value, baseline=baseline, threshold=threshold, message=message, **common)


def series_onsets(
    table: pd.DataFrame, *, k: float = DEFAULT_K, min_baseline: int = DEFAULT_MIN_BASELINE
) -> dict[str, Onset]:
    """Apply ``find_onset`` to each metric of a ``band_values`` table.

    Args:
        table: Output of ``band_values`` for one series.
        k: Multiple of the scale that the distance to the baseline must exceed.
        min_baseline: Earlier steps with a value needed to form a baseline.

    Returns:
        The onset of ``alpha`` and of ``transport``, by metric.
    """
    onsets = {}
    for metric in METRICS:
        rows = table[table["metric"] == metric].sort_values("step")
        onsets[metric] = find_onset(
            rows["step"].to_numpy(),
            rows["value"].to_numpy(dtype=float),
            rows["boot_sd"].to_numpy(dtype=float),
            k=k,
            min_baseline=min_baseline,
        )

    return onsets
