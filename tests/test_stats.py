"""Tests of spinal.stats: per-layer deltas, paired intervals, band summary and verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from synthetic_runs import make_run

from spinal.errors import SettingsError
from spinal.settings import BootstrapSettings, TokenSettings, TraceSettings
from spinal.stats import (
    ComparisonError,
    compare_runs,
    format_interval,
    terminal_band_mask,
)


@pytest.fixture(scope="module")
def reference():
    return make_run("base", failed_layers=(0,))


@pytest.fixture(scope="module")
def aligned():
    return make_run("dpo", seed=1, alpha_shift=0.4, transport_shift=-0.03, failed_layers=(0,))


def test_band_mask_last_third():
    depth = np.array([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert terminal_band_mask(depth).tolist() == [False, False, False, False, True, True]


def test_band_mask_includes_boundary():
    depth = np.arange(7) / 6
    assert terminal_band_mask(depth, (2 / 3, 1.0))[4]


@pytest.mark.parametrize("band", [(0.5, 0.5), (0.8, 0.2), (-0.1, 1.0), (0.2, 1.2)])
def test_band_mask_rejects_invalid_band(band):
    with pytest.raises(SettingsError, match="terminal band"):
        terminal_band_mask(np.array([0.0, 1.0]), band)


def test_compare_table_columns(reference, aligned):
    table = compare_runs(reference, aligned).table
    expected = [
        "layer", "depth", "alpha_ref", "alpha_target", "delta_alpha", "delta_alpha_low", "delta_alpha_high",
        "transport_ref", "transport_target", "delta_transport", "delta_transport_low", "delta_transport_high", "in_band",
    ]
    assert list(table.columns) == expected


def test_compare_delta_is_target_minus_reference(reference, aligned):
    table = compare_runs(reference, aligned).table
    expected = aligned.layers["alpha"].to_numpy() - reference.layers["alpha"].to_numpy()
    np.testing.assert_allclose(table["delta_alpha"].to_numpy()[1:], expected[1:])


def test_compare_failed_fit_has_no_delta(reference, aligned):
    table = compare_runs(reference, aligned).table
    assert math.isnan(table.loc[0, "delta_alpha"])


def test_compare_failed_fit_has_no_interval(reference, aligned):
    table = compare_runs(reference, aligned).table
    assert math.isnan(table.loc[0, "delta_alpha_low"])


def test_compare_last_layer_has_no_transport_delta(reference, aligned):
    table = compare_runs(reference, aligned).table
    assert math.isnan(table["delta_transport"].iloc[-1])


def test_compare_intervals_contain_shift(reference, aligned):
    table = compare_runs(reference, aligned).table
    in_band = table[table["in_band"]].dropna(subset=["delta_alpha"])
    assert ((in_band["delta_alpha_low"] < 0.4) & (in_band["delta_alpha_high"] > 0.3)).all()


def test_compare_signature_supported(reference, aligned):
    summary = compare_runs(reference, aligned).summary
    assert summary.verdict == "supported"


def test_compare_supported_sentence_names_verdict(reference, aligned):
    summary = compare_runs(reference, aligned).summary
    assert summary.sentence.startswith("Signature supported")


def test_compare_band_share_concentrated(reference, aligned):
    summary = compare_runs(reference, aligned).summary
    assert summary.band_share_alpha > 0.9


def test_compare_band_share_transport(reference, aligned):
    summary = compare_runs(reference, aligned).summary
    assert summary.band_share_transport > 0.8


def test_compare_band_layers(reference, aligned):
    summary = compare_runs(reference, aligned).summary
    assert summary.band_layers_alpha == (4, 5, 6)


def test_compare_band_transport_layers_skip_last(reference, aligned):
    summary = compare_runs(reference, aligned).summary
    assert summary.band_layers_transport == (4, 5)


def test_compare_band_delta_interval_ordered(reference, aligned):
    summary = compare_runs(reference, aligned).summary
    assert summary.band_delta_alpha_low < summary.band_delta_alpha < summary.band_delta_alpha_high


def test_compare_opposite_direction_contradicted(reference):
    target = make_run("worse", seed=1, alpha_shift=-0.4, transport_shift=0.03, failed_layers=(0,))
    assert compare_runs(reference, target).summary.verdict == "contradicted"


def test_compare_one_metric_opposite_contradicted(reference):
    target = make_run("mixed", seed=1, alpha_shift=0.4, transport_shift=0.03, failed_layers=(0,))
    assert compare_runs(reference, target).summary.verdict == "contradicted"


def test_compare_no_change_inconclusive(reference):
    target = make_run("same", seed=1, failed_layers=(0,))
    summary = compare_runs(reference, target).summary
    assert summary.verdict == "inconclusive"


def test_compare_inconclusive_never_states_signature(reference):
    target = make_run("same", seed=1, failed_layers=(0,))
    summary = compare_runs(reference, target).summary
    assert summary.sentence.startswith("Signature not established")


def test_compare_only_alpha_excludes_zero_inconclusive(reference):
    target = make_run("alpha-only", seed=1, alpha_shift=0.4, failed_layers=(0,))
    assert compare_runs(reference, target).summary.verdict == "inconclusive"


def test_compare_bootstrap_off_no_intervals():
    ref = make_run("base", replicates=0)
    target = make_run("dpo", seed=1, replicates=0, alpha_shift=0.4, transport_shift=-0.03)
    comparison = compare_runs(ref, target)
    assert comparison.summary.verdict == "no_intervals"


def test_compare_bootstrap_off_sentence_point_estimates():
    ref = make_run("base", replicates=0)
    target = make_run("dpo", seed=1, replicates=0, alpha_shift=0.4, transport_shift=-0.03)
    sentence = compare_runs(ref, target).summary.sentence
    assert sentence.startswith("No intervals")
    assert "point estimates only" in sentence


def test_compare_bootstrap_off_interval_nan():
    ref = make_run("base", replicates=0)
    target = make_run("dpo", seed=1, replicates=0)
    summary = compare_runs(ref, target).summary
    assert math.isnan(summary.band_delta_alpha_low)


def test_compare_different_bootstrap_no_intervals(reference):
    target = make_run("dpo", seed=1, alpha_shift=0.4, transport_shift=-0.03, bootstrap_seed=7, failed_layers=(0,))
    comparison = compare_runs(reference, target)
    assert comparison.summary.verdict == "no_intervals"


def test_compare_different_bootstrap_warns(reference):
    target = make_run("dpo", seed=1, bootstrap_seed=7, failed_layers=(0,))
    warnings = compare_runs(reference, target).warnings
    assert any("bootstrap settings" in warning for warning in warnings)


def test_compare_different_layer_counts_rejected(reference):
    deeper = make_run("deeper", n_layers=9)
    with pytest.raises(ComparisonError, match="6 layers.*9 layers"):
        compare_runs(reference, deeper)


def test_compare_different_prompts_warns(reference):
    target = make_run("dpo", seed=1, prompt_sha256="f" * 64, failed_layers=(0,))
    warnings = compare_runs(reference, target).warnings
    assert any("different prompt sets" in warning for warning in warnings)


def test_compare_different_settings_warns(reference):
    settings = TraceSettings(tokens=TokenSettings(positions="all"), bootstrap=BootstrapSettings(replicates=50))
    target = make_run("dpo", seed=1, settings=settings, failed_layers=(0,))
    warnings = compare_runs(reference, target).warnings
    assert any("tokens.positions" in warning for warning in warnings)


def test_compare_different_dtype_warns(reference):
    target = make_run("dpo", seed=1, dtype="bfloat16", failed_layers=(0,))
    warnings = compare_runs(reference, target).warnings
    assert any("dtypes" in warning for warning in warnings)


def test_compare_same_setup_no_warnings(reference, aligned):
    assert compare_runs(reference, aligned).warnings == ()


def test_compare_band_without_transport_inconclusive(reference, aligned):
    summary = compare_runs(reference, aligned, band=(0.95, 1.0)).summary
    assert summary.verdict == "inconclusive"


def test_compare_empty_band_sentence_hint(reference, aligned):
    summary = compare_runs(reference, aligned, band=(0.95, 1.0)).summary
    assert "move the band start lower" in summary.sentence


def test_compare_rejects_invalid_level(reference, aligned):
    with pytest.raises(SettingsError, match="confidence level"):
        compare_runs(reference, aligned, level=1.5)


def test_compare_narrower_level_narrower_interval(reference, aligned):
    wide = compare_runs(reference, aligned, level=0.95).summary
    narrow = compare_runs(reference, aligned, level=0.5).summary
    assert narrow.band_delta_alpha_high - narrow.band_delta_alpha_low < wide.band_delta_alpha_high - wide.band_delta_alpha_low


def test_summary_to_dict_has_verdict(reference, aligned):
    assert compare_runs(reference, aligned).summary.to_dict()["verdict"] == "supported"


def test_format_interval_signed():
    assert format_interval(0.12, 0.05, 0.19) == "+0.120 [+0.050, +0.190]"


def test_format_interval_without_interval():
    assert format_interval(-0.5, float("nan"), float("nan"), digits=1) == "-0.5"


def test_format_interval_missing_value():
    assert format_interval(float("nan"), 0.0, 1.0) == "n/a"


def test_format_comparison_lists_layers(reference, aligned):
    from spinal.cli import format_comparison

    text = format_comparison(compare_runs(reference, aligned), "reference", "aligned")
    assert "signature (alpha up and transport down in the band): supported" in text
    assert text.count("\n    ") >= 6


def test_band_mask_two_decimal_edge():
    depth = np.arange(7) / 6
    assert terminal_band_mask(depth, (0.67, 1.0))[4]


def test_band_mask_excludes_beyond_tolerance():
    depth = np.arange(7) / 6
    assert not terminal_band_mask(depth, (0.68, 1.0))[4]
