"""Tests of spinal.series (grouping, band values, departure marker) and spinal.series_figures."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
from synthetic_runs import make_run

from spinal import series, series_figures
from spinal.errors import SettingsError
from spinal.settings import BootstrapSettings, FitSettings, TraceSettings

XSS_LABEL = "<script>alert(1)</script>"
BAND = (2.0 / 3.0, 1.0)


def _position(name: str, step: int, epoch: float | None = None) -> dict:
    return {"name": name, "step": step, "epoch": epoch}


def _series_runs(name: str = "sft", steps=(0, 100, 200, 300), shifts=None, **options) -> list:
    shifts = shifts or [0.0] * len(steps)
    return [
        make_run(f"{name} step {step}", seed=step + 1, alpha_shift=shift, series=_position(name, step, step / 1000), **options)
        for step, shift in zip(steps, shifts, strict=True)
    ]


def _with_created(run, created: str):
    clone = copy.copy(run)
    clone.manifest = dict(run.manifest, created=created)
    return clone


# ---------------------------------------------------------------------------------------------
# Finding series


def test_find_series_orders_by_step():
    runs = _series_runs(steps=(0, 100, 200, 300))
    found = series.find_series([runs[2], runs[0], runs[3], runs[1]])
    assert found[0].steps == (0, 100, 200, 300)


def test_find_series_run_ids_follow_steps():
    runs = _series_runs(steps=(0, 100, 200))
    found = series.find_series(reversed(runs))
    assert found[0].run_ids == tuple(run.run_id for run in runs)


def test_find_series_keeps_epochs():
    found = series.find_series(_series_runs(steps=(0, 500)))
    assert found[0].epochs == (0.0, 0.5)


def test_find_series_skips_runs_without_series():
    runs = [*_series_runs(steps=(0, 1)), make_run("plain", seed=9)]
    found = series.find_series(runs)
    assert [len(item.run_ids) for item in found] == [2]


def test_find_series_groups_by_name():
    runs = [*_series_runs("first", steps=(0, 1)), *_series_runs("second", steps=(0, 1, 2))]
    found = series.find_series(runs)
    assert sorted((item.name, len(item.run_ids)) for item in found) == [("first", 2), ("second", 3)]


def test_find_series_newest_first():
    older = [_with_created(run, "2025-01-01T00:00:00+00:00") for run in _series_runs("older", steps=(0, 1))]
    newer = [_with_created(run, "2025-02-01T00:00:00+00:00") for run in _series_runs("newer", steps=(0, 1))]
    found = series.find_series([*older, *newer])
    assert [item.name for item in found] == ["newer", "older"]


def test_find_series_unsplit_key_is_name():
    found = series.find_series(_series_runs("sft"))
    assert found[0].key == "sft"
    assert found[0].variant == ""
    assert found[0].warnings == ()


def test_find_series_splits_layer_count():
    runs = [*_series_runs(steps=(0, 1)), *_series_runs(steps=(2, 3), n_layers=9)]
    found = series.find_series(runs)
    assert sorted(item.variant for item in found) == ["6 layers", "9 layers"]


def test_find_series_split_keys_unique():
    runs = [*_series_runs(steps=(0, 1)), *_series_runs(steps=(2, 3), n_layers=9)]
    keys = [item.key for item in series.find_series(runs)]
    assert len(set(keys)) == 2


def test_find_series_split_warns():
    runs = [*_series_runs(steps=(0, 1)), *_series_runs(steps=(2, 3), n_layers=9)]
    warning = series.find_series(runs)[0].warnings[0]
    assert "differ in layer count" in warning


def test_find_series_splits_prompt_set():
    runs = [*_series_runs(steps=(0, 1)), *_series_runs(steps=(2, 3), prompt_sha256="f" * 64)]
    found = series.find_series(runs)
    assert "differ in prompt set" in found[0].warnings[0]


def test_find_series_splits_settings():
    other = TraceSettings(fit=FitSettings(drop_top=0.1))
    runs = [*_series_runs(steps=(0, 1)), *_series_runs(steps=(2, 3), settings=other)]
    found = series.find_series(runs)
    assert "differ in trace settings" in found[0].warnings[0]


def test_find_series_splits_dtype():
    runs = [*_series_runs(steps=(0, 1)), *_series_runs(steps=(2, 3), dtype="bfloat16")]
    found = series.find_series(runs)
    assert sorted(item.variant for item in found) == ["dtype bfloat16", "dtype float32"]


def test_find_series_duplicate_step_keeps_newest():
    first, second = _series_runs(steps=(0, 100))
    again = _with_created(make_run("sft step 100 again", seed=77, series=_position("sft", 100)), "2025-06-01T00:00:00+00:00")
    found = series.find_series([first, second, again])
    assert found[0].run_ids == (first.run_id, again.run_id)


def test_find_series_duplicate_step_warns():
    first, second = _series_runs(steps=(0, 100))
    again = _with_created(make_run("sft step 100 again", seed=77, series=_position("sft", 100)), "2025-06-01T00:00:00+00:00")
    warning = series.find_series([first, second, again])[0].warnings[0]
    assert "more than one run at step 100" in warning


@pytest.mark.parametrize(
    "entry",
    [
        {"name": "", "step": 1},
        {"name": "sft", "step": "10"},
        {"name": "sft", "step": -1},
        {"name": "sft", "step": True},
        {"name": "sft", "step": 1.5},
        {"step": 1},
        "sft@1",
    ],
)
def test_series_position_invalid_entry(entry):
    assert series.series_position({"series": entry}) is None


def test_series_position_integral_float_step():
    assert series.series_position({"series": {"name": "sft", "step": 20.0, "epoch": 1}}) == ("sft", 20, 1.0)


def test_series_title_names_steps():
    found = series.find_series(_series_runs("sft", steps=(0, 100, 200)))
    assert found[0].title == "sft (3 steps, 0 to 200)"


def test_default_series_contains_selected_runs():
    older = [_with_created(run, "2025-01-01T00:00:00+00:00") for run in _series_runs("older", steps=(0, 1))]
    newer = [_with_created(run, "2025-02-01T00:00:00+00:00") for run in _series_runs("newer", steps=(0, 1))]
    found = series.find_series([*older, *newer])
    assert series.default_series(found, [older[1].run_id]).name == "older"


def test_default_series_newest_without_selection():
    older = [_with_created(run, "2025-01-01T00:00:00+00:00") for run in _series_runs("older", steps=(0, 1))]
    newer = [_with_created(run, "2025-02-01T00:00:00+00:00") for run in _series_runs("newer", steps=(0, 1))]
    found = series.find_series([*older, *newer])
    assert series.default_series(found, ["not-a-run"]).name == "newer"


def test_default_series_none_when_empty():
    assert series.default_series([], ["x"]) is None


# ---------------------------------------------------------------------------------------------
# Band values


@pytest.fixture(scope="module")
def band_runs():
    """Three runs of one series; the middle one has a failed band layer."""
    return [
        make_run("s0", seed=1, series=_position("sft", 0)),
        make_run("s1", seed=2, failed_layers=(5,), series=_position("sft", 10)),
        make_run("s2", seed=3, alpha_shift=0.5, series=_position("sft", 20)),
    ]


def _rows(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    return table[table["metric"] == metric].reset_index(drop=True)


def test_band_values_columns(band_runs):
    table = series.band_values(band_runs, [0, 10, 20], BAND)
    assert list(table.columns) == list(series.BAND_COLUMNS)


def test_band_values_one_row_per_metric(band_runs):
    table = series.band_values(band_runs, [0, 10, 20], BAND)
    assert list(table["metric"]) == ["alpha", "transport"] * 3


def test_band_values_alpha_is_band_mean(band_runs):
    table = series.band_values(band_runs, [0, 10, 20], BAND)
    expected = band_runs[0].layers["alpha"].to_numpy()[4:7].mean()
    assert _rows(table, "alpha")["value"][0] == pytest.approx(expected)


def test_band_values_skips_failed_layer(band_runs):
    table = series.band_values(band_runs, [0, 10, 20], BAND)
    alpha = band_runs[1].layers["alpha"].to_numpy()
    assert _rows(table, "alpha")["value"][1] == pytest.approx(np.mean([alpha[4], alpha[6]]))


def test_band_values_lists_band_layers(band_runs):
    table = series.band_values(band_runs, [0, 10, 20], BAND)
    assert list(_rows(table, "alpha")["band_layers"]) == ["4, 5, 6", "4, 6", "4, 5, 6"]


def test_band_values_transport_skips_last_layer(band_runs):
    table = series.band_values(band_runs, [0, 10, 20], BAND)
    expected = band_runs[0].layers["transport"].to_numpy()[4:6].mean()
    assert _rows(table, "transport")["value"][0] == pytest.approx(expected)


def test_band_values_interval_from_replicates(band_runs):
    run = band_runs[0]
    table = series.band_values(band_runs, [0, 10, 20], BAND)
    matrix = run.replicates.pivot(index="replicate", columns="layer", values="alpha")[[4, 5, 6]].to_numpy()
    expected = np.quantile(matrix.mean(axis=1), [0.025, 0.975])
    row = _rows(table, "alpha").iloc[0]
    np.testing.assert_allclose([row["low"], row["high"]], expected)


def test_band_values_bootstrap_sd(band_runs):
    run = band_runs[0]
    table = series.band_values(band_runs, [0, 10, 20], BAND)
    matrix = run.replicates.pivot(index="replicate", columns="layer", values="transport")[[4, 5]].to_numpy()
    assert _rows(table, "transport")["boot_sd"][0] == pytest.approx(matrix.mean(axis=1).std(ddof=1))


def test_band_values_interval_uses_run_level():
    settings = TraceSettings(bootstrap=BootstrapSettings(replicates=50, level=0.8))
    run = make_run("s0", settings=settings, series=_position("sft", 0))
    row = _rows(series.band_values([run], [0], BAND), "alpha").iloc[0]
    matrix = run.replicates.pivot(index="replicate", columns="layer", values="alpha")[[4, 5, 6]].to_numpy()
    np.testing.assert_allclose([row["low"], row["high"]], np.quantile(matrix.mean(axis=1), [0.1, 0.9]))


def test_band_values_counts_replicates(band_runs):
    table = series.band_values(band_runs, [0, 10, 20], BAND)
    assert set(table["n_replicates"]) == {50}


def test_band_values_bootstrap_off():
    run = make_run("off", replicates=0, series=_position("sft", 0))
    row = _rows(series.band_values([run], [0], BAND), "alpha").iloc[0]
    assert np.isnan(row["low"])
    assert row["interval_note"] == "bootstrap off in this run"


def test_band_values_missing_replicates_noted():
    run = copy.copy(make_run("lost", series=_position("sft", 0)))
    run.replicates = run.replicates.iloc[0:0]
    row = _rows(series.band_values([run], [0], BAND), "transport").iloc[0]
    assert row["interval_note"] == "no bootstrap replicates stored"


def test_band_values_replicates_without_alpha():
    # Alpha intervals are skipped by the engine when too few prompt groups fit in memory.
    run = copy.copy(make_run("few groups", series=_position("sft", 0)))
    run.replicates = run.replicates.assign(alpha=np.nan)
    table = series.band_values([run], [0], BAND)
    assert np.isnan(_rows(table, "alpha")["low"][0])
    assert np.isfinite(_rows(table, "transport")["low"][0])


def test_band_values_band_without_transport():
    run = make_run("last only", series=_position("sft", 0))
    row = _rows(series.band_values([run], [0], (0.9, 1.0)), "transport").iloc[0]
    assert np.isnan(row["value"])
    assert row["interval_note"] == "no layer of the band has a usable value"


def test_band_values_epochs_recorded(band_runs):
    table = series.band_values(band_runs, [0, 10, 20], BAND, epochs=[0.0, None, 1.0])
    np.testing.assert_array_equal(_rows(table, "alpha")["epoch"], [0.0, np.nan, 1.0])


def test_band_values_length_mismatch(band_runs):
    with pytest.raises(ValueError, match="3 runs and 2 steps"):
        series.band_values(band_runs, [0, 10], BAND)


def test_band_values_invalid_band(band_runs):
    with pytest.raises(SettingsError, match="terminal band"):
        series.band_values(band_runs, [0, 10, 20], (0.9, 0.1))


# ---------------------------------------------------------------------------------------------
# Departure from the running baseline


STEP_CHANGE = [1.0, 1.01, 0.99, 1.0, 1.02, 2.0, 2.01, 1.99]
STEPS = [0, 10, 20, 30, 40, 50, 60, 70]


def test_onset_step_change_marked():
    onset = series.find_onset(STEPS, STEP_CHANGE, [0.01] * 8)
    assert onset.status == "departs"
    assert onset.step == 50


def test_onset_reports_baseline_and_threshold():
    onset = series.find_onset(STEPS, STEP_CHANGE, [0.01] * 8)
    earlier = np.array(STEP_CHANGE[:5])
    assert onset.baseline == pytest.approx(earlier.mean())
    assert onset.threshold == pytest.approx(3 * earlier.std(ddof=1))


def test_onset_drop_marked():
    values = [5.0, 5.1, 4.9, 5.0, 3.0, 3.0]
    onset = series.find_onset(range(6), values, [0.05] * 6)
    assert onset.step == 4


def test_onset_flat_noise_none():
    rng = np.random.default_rng(0)
    values = 2.0 + rng.normal(0.0, 0.01, size=40)
    onset = series.find_onset(range(0, 400, 10), values, np.full(40, 0.01))
    assert onset.status == "no_departure"
    assert onset.step is None


def test_onset_flat_noise_says_no_departure():
    rng = np.random.default_rng(1)
    values = 2.0 + rng.normal(0.0, 0.01, size=20)
    onset = series.find_onset(range(20), values, np.full(20, 0.01))
    assert onset.message.startswith("No departure")


def test_onset_too_short_none():
    onset = series.find_onset([0, 10], [1.0, 5.0], [0.01, 0.01])
    assert onset.status == "too_short"
    assert onset.step is None


def test_onset_too_short_gives_reason():
    onset = series.find_onset([0, 10], [1.0, 5.0], [0.01, 0.01])
    assert "needs at least 3 steps with a value" in onset.message


def test_onset_nan_steps_do_not_count():
    onset = series.find_onset([0, 10, 20], [1.0, np.nan, 5.0], [0.01] * 3)
    assert onset.status == "too_short"


def test_onset_nan_step_skipped_in_baseline():
    onset = series.find_onset([0, 10, 20, 30, 40], [1.0, np.nan, 1.02, 0.98, 3.0], [0.01] * 5)
    assert onset.step == 40
    assert onset.n_values == 4


def test_onset_larger_k_hides_change():
    values = [1.0, 1.01, 0.99, 1.0, 1.1]
    onset = series.find_onset(range(5), values, [0.01] * 5, k=20.0)
    assert onset.status == "no_departure"


def test_onset_smaller_k_finds_change():
    values = [1.0, 1.01, 0.99, 1.0, 1.1]
    onset = series.find_onset(range(5), values, [0.01] * 5, k=3.0)
    assert onset.step == 4


def test_onset_min_baseline_respected():
    onset = series.find_onset(range(6), [1.0, 1.01, 0.99, 1.0, 2.0, 2.0], [0.01] * 6, min_baseline=5)
    assert onset.status == "no_departure"


def test_onset_min_baseline_too_short():
    onset = series.find_onset(range(4), [1.0, 1.01, 0.99, 2.0], [0.01] * 4, min_baseline=4)
    assert onset.status == "too_short"
    assert onset.min_baseline == 4


def test_onset_bootstrap_sd_widens_threshold():
    onset = series.find_onset(range(4), [1.0, 1.0, 1.0, 1.05], [0.02] * 4)
    assert onset.status == "no_departure"


def test_onset_without_intervals_uses_spread():
    onset = series.find_onset(range(4), [1.0, 1.0, 1.0, 1.05], None)
    assert onset.step == 3


def test_onset_spread_wider_than_bootstrap():
    onset = series.find_onset(range(4), [1.0, 1.2, 0.8, 1.3], [0.001] * 4)
    assert onset.thresholds[3] == pytest.approx(3 * 0.2)


def test_onset_within_spread_no_departure():
    onset = series.find_onset(range(4), [1.0, 1.2, 0.8, 1.3], [0.001] * 4)
    assert onset.status == "no_departure"


def test_onset_baselines_per_step():
    onset = series.find_onset(range(4), [1.0, 2.0, 3.0, 4.0], [0.0] * 4, k=100.0)
    np.testing.assert_allclose(onset.baselines, [np.nan, np.nan, 1.5, 2.0])


def test_onset_thresholds_per_step():
    onset = series.find_onset(range(4), [1.0, 2.0, 3.0, 4.0], [0.0] * 4, k=2.0)
    np.testing.assert_allclose(onset.thresholds, [np.nan, np.nan, 2.0 * np.std([1, 2], ddof=1), 2.0 * 1.0])


@pytest.mark.parametrize("k", [0.0, -1.0, float("nan")])
def test_onset_invalid_k(k):
    with pytest.raises(SettingsError, match="departure threshold k"):
        series.find_onset(range(4), [1.0] * 4, k=k)


def test_onset_invalid_min_baseline():
    with pytest.raises(SettingsError, match="min_baseline=1"):
        series.find_onset(range(4), [1.0] * 4, min_baseline=1)


def test_onset_unsorted_steps():
    with pytest.raises(ValueError, match="not strictly increasing"):
        series.find_onset([0, 20, 10], [1.0, 1.0, 1.0])


def test_onset_length_mismatch():
    with pytest.raises(ValueError, match="one length"):
        series.find_onset([0, 10, 20], [1.0, 1.0])


def test_series_onsets_per_metric():
    runs = _series_runs(steps=(0, 10, 20, 30, 40), shifts=[0.0, 0.0, 0.0, 0.0, 0.8])
    table = series.band_values(runs, [0, 10, 20, 30, 40], BAND)
    onsets = series.series_onsets(table)
    assert onsets["alpha"].step == 40
    assert onsets["transport"].status == "no_departure"


def test_series_onsets_passes_k():
    runs = _series_runs(steps=(0, 10, 20, 30, 40), shifts=[0.0, 0.0, 0.0, 0.0, 0.8])
    table = series.band_values(runs, [0, 10, 20, 30, 40], BAND)
    assert series.series_onsets(table, k=500.0)["alpha"].status == "no_departure"


# ---------------------------------------------------------------------------------------------
# Figures


@pytest.fixture(scope="module")
def figure_runs():
    """Five steps; a step change in alpha at step 40 and a failed fit at layer 1 of step 10."""
    return [
        make_run(
            f"step {step}",
            seed=step + 1,
            alpha_shift=0.8 if step >= 40 else 0.0,
            failed_layers=(1,) if step == 10 else (),
            series=_position("sft", step, step / 100),
        )
        for step in (0, 10, 20, 30, 40)
    ]


@pytest.fixture(scope="module")
def figure_table(figure_runs):
    return series.band_values(figure_runs, [0, 10, 20, 30, 40], BAND)


def _named(fig, name: str):
    return [trace for trace in fig.data if trace.name == name]


def test_series_heatmap_type(figure_runs):
    fig = series_figures.series_heatmap(figure_runs, [0, 10, 20, 30, 40])
    assert [trace.type for trace in fig.data] == ["heatmap"]


def test_series_heatmap_x_is_step(figure_runs):
    fig = series_figures.series_heatmap(figure_runs, [0, 10, 20, 30, 40])
    assert list(fig.data[0].x) == [0, 10, 20, 30, 40]


def test_series_heatmap_y_is_layer(figure_runs):
    fig = series_figures.series_heatmap(figure_runs, [0, 10, 20, 30, 40])
    np.testing.assert_array_equal(fig.data[0].y, np.arange(7))


def test_series_heatmap_y_is_depth(figure_runs):
    fig = series_figures.series_heatmap(figure_runs, [0, 10, 20, 30, 40], axis="depth")
    np.testing.assert_allclose(fig.data[0].y, np.arange(7) / 6)


def test_series_heatmap_alpha_values(figure_runs):
    fig = series_figures.series_heatmap(figure_runs, [0, 10, 20, 30, 40])
    np.testing.assert_allclose(np.asarray(fig.data[0].z)[:, 4], figure_runs[4].layers["alpha"].to_numpy())


def test_series_heatmap_failed_fit_is_gap(figure_runs):
    fig = series_figures.series_heatmap(figure_runs, [0, 10, 20, 30, 40])
    assert np.isnan(np.asarray(fig.data[0].z)[1, 1])


def test_series_heatmap_failed_fit_hover(figure_runs):
    fig = series_figures.series_heatmap(figure_runs, [0, 10, 20, 30, 40])
    assert "alpha: no value (too_few: fewer than 5" in fig.data[0].customdata[1][1]


def test_series_heatmap_hover_step_layer_value(figure_runs):
    fig = series_figures.series_heatmap(figure_runs, [0, 10, 20, 30, 40], epochs=[0.0, 0.1, 0.2, 0.3, 0.4])
    value = figure_runs[2].layers["alpha"][3]
    assert fig.data[0].customdata[3][2] == f"step 20 (epoch 0.2)<br>layer 3 (depth 0.50)<br>alpha {value:.4f} (status ok, R² 0.980)"


def test_series_heatmap_transport_last_layer_gap(figure_runs):
    fig = series_figures.series_heatmap(figure_runs, [0, 10, 20, 30, 40], metric="transport")
    assert np.isnan(np.asarray(fig.data[0].z)[-1]).all()


def test_series_heatmap_transport_hover_status(figure_runs):
    fig = series_figures.series_heatmap(figure_runs, [0, 10, 20, 30, 40], metric="transport")
    assert fig.data[0].customdata[-1][0].endswith("transport: no value (last_layer)")


def test_series_heatmap_axis_titles(figure_runs):
    fig = series_figures.series_heatmap(figure_runs, [0, 10, 20, 30, 40], axis="depth")
    assert fig.layout.xaxis.title.text == "training step"
    # The figure is 360 px high, too short for the long vertical title.
    assert fig.layout.yaxis.title.text == "relative depth"


def test_series_heatmap_escapes_name(figure_runs):
    fig = series_figures.series_heatmap(figure_runs, [0, 10, 20, 30, 40], name=XSS_LABEL)
    assert XSS_LABEL not in json.dumps(fig.to_plotly_json(), default=str)


def test_band_figure_trace_types(figure_table):
    fig = series_figures.series_band_figure(figure_table, series.series_onsets(figure_table), band=BAND)
    assert {trace.type for trace in fig.data} == {"scatter"}


def test_band_figure_means_per_metric(figure_table):
    fig = series_figures.series_band_figure(figure_table, series.series_onsets(figure_table), band=BAND)
    assert [len(_named(fig, f"band mean {metric}")) for metric in ("alpha", "transport")] == [1, 1]


def test_band_figure_alpha_data(figure_table):
    fig = series_figures.series_band_figure(figure_table, series.series_onsets(figure_table), band=BAND)
    trace = _named(fig, "band mean alpha")[0]
    np.testing.assert_allclose(trace.y, _rows(figure_table, "alpha")["value"])


def test_band_figure_x_is_step(figure_table):
    fig = series_figures.series_band_figure(figure_table, series.series_onsets(figure_table), band=BAND)
    assert list(_named(fig, "band mean transport")[0].x) == [0, 10, 20, 30, 40]


def test_band_figure_axis_titles(figure_table):
    fig = series_figures.series_band_figure(figure_table, series.series_onsets(figure_table), band=BAND)
    assert fig.layout.xaxis2.title.text == "training step"
    assert fig.layout.yaxis.title.text == "alpha (tail exponent)"
    assert fig.layout.yaxis2.title.text == "transport (Fisher-Rao)"


def test_band_figure_interval_drawn(figure_table):
    fig = series_figures.series_band_figure(figure_table, series.series_onsets(figure_table), band=BAND)
    assert len(_named(fig, "interval")) == 2


def test_band_figure_onset_line(figure_table):
    fig = series_figures.series_band_figure(figure_table, series.series_onsets(figure_table), band=BAND)
    lines = [(shape.x0, shape.line.dash) for shape in fig.layout.shapes]
    assert lines == [(40, "dash")]


def test_band_figure_onset_label(figure_table):
    fig = series_figures.series_band_figure(figure_table, series.series_onsets(figure_table), band=BAND)
    labels = [annotation.text for annotation in fig.layout.annotations if "departs" in annotation.text and "step 40" in annotation.text]
    assert labels == ["departs from running baseline (step 40, k = 3)"]


def test_band_figure_no_line_without_departure(figure_table):
    onsets = series.series_onsets(figure_table, k=1000.0)
    fig = series_figures.series_band_figure(figure_table, onsets, band=BAND)
    assert len(fig.layout.shapes) == 0


def test_band_figure_threshold_drawn(figure_table):
    onsets = series.series_onsets(figure_table)
    upper = _named(series_figures.series_band_figure(figure_table, onsets, band=BAND), "threshold")[0]
    alpha = onsets["alpha"]
    np.testing.assert_allclose(upper.y, alpha.baselines + alpha.thresholds)


def test_band_figure_footer_states_k(figure_table):
    fig = series_figures.series_band_figure(figure_table, series.series_onsets(figure_table, k=2.5), band=BAND)
    assert any("k = 2.5; a reading aid" in annotation.text for annotation in fig.layout.annotations)


def test_band_figure_hollow_without_interval(figure_runs):
    runs = list(figure_runs)
    runs[2] = copy.copy(runs[2])
    runs[2].replicates = runs[2].replicates.iloc[0:0]
    table = series.band_values(runs, [0, 10, 20, 30, 40], BAND)
    fig = series_figures.series_band_figure(table, series.series_onsets(table), band=BAND)
    assert list(_named(fig, "band mean alpha")[0].marker.symbol) == ["circle", "circle", "circle-open", "circle", "circle"]


def test_band_figure_footer_lists_missing_intervals(figure_runs):
    runs = list(figure_runs)
    runs[2] = copy.copy(runs[2])
    runs[2].replicates = runs[2].replicates.iloc[0:0]
    table = series.band_values(runs, [0, 10, 20, 30, 40], BAND)
    fig = series_figures.series_band_figure(table, series.series_onsets(table), band=BAND)
    assert any("hollow markers have no interval (alpha at step 20; transport at step 20)" in note.text for note in fig.layout.annotations)


def test_band_figure_hover_without_interval(figure_runs):
    runs = list(figure_runs)
    runs[2] = copy.copy(runs[2])
    runs[2].replicates = runs[2].replicates.iloc[0:0]
    table = series.band_values(runs, [0, 10, 20, 30, 40], BAND)
    fig = series_figures.series_band_figure(table, series.series_onsets(table), band=BAND)
    assert "no interval (no bootstrap replicates stored)" in _named(fig, "band mean alpha")[0].customdata[2]


def test_band_figure_empty_metric_explained(figure_runs):
    table = series.band_values(figure_runs, [0, 10, 20, 30, 40], (0.9, 1.0))
    fig = series_figures.series_band_figure(table, series.series_onsets(table), band=(0.9, 1.0))
    assert any(annotation.text.startswith("no transport value in the terminal band") for annotation in fig.layout.annotations)


def test_band_figure_escapes_labels():
    runs = [make_run(XSS_LABEL, seed=step + 1, series=_position(XSS_LABEL, step)) for step in (0, 1, 2)]
    table = series.band_values(runs, [0, 1, 2], BAND)
    fig = series_figures.series_band_figure(table, series.series_onsets(table), band=BAND, runs=runs, name=XSS_LABEL)
    assert XSS_LABEL not in json.dumps(fig.to_plotly_json(), default=str)
