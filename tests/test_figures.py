"""Tests of spinal.figures: trace types, axis titles, data, gaps for failed fits, escaping."""

from __future__ import annotations

import math

import numpy as np
import pytest
from synthetic_runs import make_run

from spinal import figures
from spinal.stats import compare_runs

XSS_LABEL = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def reference():
    return make_run("base", failed_layers=(0,))


@pytest.fixture(scope="module")
def aligned():
    return make_run("dpo", seed=1, alpha_shift=0.4, transport_shift=-0.03, failed_layers=(0,))


@pytest.fixture(scope="module")
def deeper():
    return make_run("deeper", n_layers=9, seed=2)


def _values(array) -> np.ndarray:
    return np.array([np.nan if value is None else value for value in array], dtype=float)


def _main_traces(fig, kind="scatter"):
    return [trace for trace in fig.data if trace.type == kind and trace.mode == "lines+markers"]


def test_trajectory_one_trace_per_run(reference, aligned, deeper):
    fig = figures.trajectory_3d([reference, aligned, deeper])
    assert [trace.type for trace in fig.data] == ["scatter3d"] * 3


def test_trajectory_x_is_layer(reference):
    fig = figures.trajectory_3d([reference])
    assert list(fig.data[0].x) == list(range(7))


def test_trajectory_depth_axis(deeper):
    fig = figures.trajectory_3d([deeper], axis="depth")
    np.testing.assert_allclose(fig.data[0].x, np.arange(10) / 9)


def test_trajectory_failed_fit_is_gap(reference):
    fig = figures.trajectory_3d([reference])
    assert math.isnan(fig.data[0].y[0])


def test_trajectory_alpha_values(reference):
    fig = figures.trajectory_3d([reference])
    np.testing.assert_allclose(fig.data[0].y[1:], reference.layers["alpha"].to_numpy()[1:])


def test_trajectory_last_layer_has_no_transport(reference):
    fig = figures.trajectory_3d([reference])
    assert math.isnan(fig.data[0].z[-1])


def test_trajectory_band_markers_larger(reference):
    sizes = figures.trajectory_3d([reference]).data[0].marker.size
    assert list(sizes) == [4, 4, 4, 4, 9, 9, 9]


def test_trajectory_runs_have_distinct_colours(reference, aligned):
    fig = figures.trajectory_3d([reference, aligned])
    assert fig.data[0].line.color != fig.data[1].line.color


def test_trajectory_axis_titles(reference):
    scene = figures.trajectory_3d([reference]).layout.scene
    assert (scene.xaxis.title.text, scene.yaxis.title.text, scene.zaxis.title.text) == ("layer", "alpha", "transport")


def test_trajectory_keeps_camera_between_reruns(reference):
    fig = figures.trajectory_3d([reference], camera="alpha vs transport")
    assert fig.layout.scene.uirevision == "camera-alpha vs transport"


def test_trajectory_camera_preset_applied(reference):
    fig = figures.trajectory_3d([reference], camera="alpha vs depth")
    assert fig.layout.scene.camera.eye.y == figures.CAMERA_PRESETS["alpha vs depth"]["eye"]["y"]


def test_trajectory_unknown_camera_falls_back(reference):
    fig = figures.trajectory_3d([reference], camera="nonsense")
    assert fig.layout.scene.uirevision == "camera-oblique"


def test_trajectory_hover_reports_failed_fit(reference):
    customdata = figures.trajectory_3d([reference]).data[0].customdata
    assert "not fitted (too_few" in customdata[0][2]


def test_trajectory_footer_lists_flagged_layers(reference):
    annotations = [annotation.text for annotation in figures.trajectory_3d([reference]).layout.annotations]
    assert any("alpha not fitted (gaps): base: layers 0" in text for text in annotations)


def test_trajectory_escapes_label():
    run = make_run(XSS_LABEL)
    fig = figures.trajectory_3d([run])
    assert fig.data[0].name == "&lt;script&gt;alert(1)&lt;/script&gt;"


def test_figure_json_has_no_raw_script_tag():
    run = make_run(XSS_LABEL)
    assert "<script>" not in figures.profile_figure([run]).to_json()


def test_legend_names_add_id_for_duplicates():
    first, second = make_run("same", seed=1), make_run("same", seed=2)
    names = figures.legend_names([first, second])
    assert names == [f"same ({first.run_id[:8]})", f"same ({second.run_id[:8]})"]


def test_profile_axis_titles(reference):
    layout = figures.profile_figure([reference]).layout
    assert (layout.yaxis.title.text, layout.yaxis2.title.text, layout.xaxis2.title.text) == (
        figures.METRIC_TITLES["alpha"],
        figures.METRIC_TITLES["transport"],
        figures.AXIS_TITLES["layer"],
    )


def test_profile_alpha_gap_for_failed_fit(reference):
    alpha_trace = _main_traces(figures.profile_figure([reference]))[0]
    assert math.isnan(alpha_trace.y[0])


def test_profile_transport_values(reference):
    transport_trace = _main_traces(figures.profile_figure([reference]))[1]
    np.testing.assert_allclose(transport_trace.y[:-1], reference.layers["transport"].to_numpy()[:-1])


def _flags(fig):
    return [trace for trace in fig.data if trace.name == "alpha not fitted"]


def test_profile_flags_failed_fit(reference):
    assert list(_flags(figures.profile_figure([reference]))[0].x) == [0.0]


def test_profile_flags_all_runs_in_one_trace(reference, aligned, deeper):
    flags = _flags(figures.profile_figure([reference, aligned, deeper]))
    assert len(flags) == 1
    assert len(flags[0].x) == 2


def test_profile_flag_colour_follows_run(reference, aligned):
    flags = _flags(figures.profile_figure([reference, aligned]))
    assert list(flags[0].marker.color) == [figures.PALETTE[0], figures.PALETTE[1]]


def test_profile_flag_has_no_alpha_value(reference):
    assert _flags(figures.profile_figure([reference]))[0].yaxis == "y3"


def test_profile_no_flags_without_failures(deeper):
    assert _flags(figures.profile_figure([deeper])) == []


def test_profile_band_shaded(reference):
    shapes = figures.profile_figure([reference]).layout.shapes
    assert (shapes[0].x0, shapes[0].x1) == pytest.approx((4.0, 6.0))


def test_profile_band_in_depth_units(reference):
    shapes = figures.profile_figure([reference], axis="depth", band=(0.5, 0.9)).layout.shapes
    assert (shapes[0].x0, shapes[0].x1) == pytest.approx((0.5, 0.9))


def test_profile_interval_polygons(reference):
    bands = [trace for trace in figures.profile_figure([reference]).data if trace.fill == "toself"]
    assert len(bands) == 2


def test_profile_without_intervals(reference):
    bands = [trace for trace in figures.profile_figure([reference], show_ci=False).data if trace.fill == "toself"]
    assert bands == []


def test_profile_interval_skips_failed_row(reference):
    alpha_band = next(trace for trace in figures.profile_figure([reference]).data if trace.fill == "toself")
    assert 0.0 not in [x for x in alpha_band.x if x is not None]


def test_profile_fixed_ranges(reference, aligned):
    ranges = figures.shared_ranges([reference, aligned], "layer")
    layout = figures.profile_figure([reference], ranges=ranges).layout
    assert tuple(layout.yaxis.range) == pytest.approx(ranges.alpha)


def test_shared_ranges_cover_all_runs(reference, aligned):
    ranges = figures.shared_ranges([reference, aligned], "layer")
    assert ranges.alpha[1] > np.nanmax(aligned.layers["alpha"])


def test_shared_ranges_ignore_failed_rows():
    run = make_run("base", failed_layers=(0,))
    run.layers.loc[0, "alpha"] = 1000.0
    assert figures.shared_ranges([run], "layer").alpha[1] < 10


def test_checkpoint_heatmap_shape(reference, aligned):
    fig = figures.checkpoint_heatmap([reference, aligned], metric="alpha")
    assert np.asarray(fig.data[0].z).shape == (2, 7)


def test_checkpoint_heatmap_type(reference):
    assert figures.checkpoint_heatmap([reference]).data[0].type == "heatmap"


def test_checkpoint_heatmap_failed_cell_blank(reference):
    z = np.asarray(figures.checkpoint_heatmap([reference], metric="alpha").data[0].z, dtype=float)
    assert math.isnan(z[0, 0])


def test_checkpoint_heatmap_transport_last_blank(reference):
    z = np.asarray(figures.checkpoint_heatmap([reference], metric="transport").data[0].z, dtype=float)
    assert math.isnan(z[0, -1])


def test_checkpoint_heatmap_depth_union(reference, deeper):
    fig = figures.checkpoint_heatmap([reference, deeper], axis="depth")
    assert len(fig.data[0].x) == len(np.unique(np.round(np.concatenate([np.arange(7) / 6, np.arange(10) / 9]), 6)))


def test_checkpoint_heatmap_axis_titles(reference):
    layout = figures.checkpoint_heatmap([reference]).layout
    assert (layout.xaxis.title.text, layout.yaxis.title.text) == (figures.AXIS_TITLES["layer"], "checkpoint")


def test_difference_heatmap_reference_row_zero(reference, aligned):
    z = np.asarray(figures.checkpoint_heatmap([reference, aligned], reference=reference).data[0].z, dtype=float)
    np.testing.assert_allclose(z[0, 1:], 0.0)


def test_difference_heatmap_values(reference, aligned):
    z = np.asarray(figures.checkpoint_heatmap([reference, aligned], reference=reference).data[0].z, dtype=float)
    expected = aligned.layers["alpha"].to_numpy() - reference.layers["alpha"].to_numpy()
    np.testing.assert_allclose(z[1, 1:], expected[1:])


def test_difference_heatmap_centred_at_zero(reference, aligned):
    trace = figures.checkpoint_heatmap([reference, aligned], reference=reference).data[0]
    assert trace.zmid == 0.0


def test_difference_heatmap_other_depth_blank(reference, deeper):
    trace = figures.checkpoint_heatmap([reference, deeper], reference=reference).data[0]
    assert np.isnan(np.asarray(trace.z, dtype=float)[1]).all()


def test_difference_heatmap_other_depth_explained(reference, deeper):
    trace = figures.checkpoint_heatmap([reference, deeper], reference=reference).data[0]
    assert "layer count differs" in trace.customdata[1][0]


def test_prompt_heatmap_shape(aligned):
    z = np.asarray(figures.prompt_heatmap(aligned).data[0].z, dtype=float)
    assert z.shape == (12, 7)


def test_prompt_heatmap_limits_prompts(aligned):
    z = np.asarray(figures.prompt_heatmap(aligned, max_prompts=5).data[0].z, dtype=float)
    assert z.shape[0] == 5


def test_prompt_heatmap_last_layer_blank(aligned):
    z = np.asarray(figures.prompt_heatmap(aligned).data[0].z, dtype=float)
    assert np.isnan(z[:, -1]).all()


def test_prompt_heatmap_values(aligned):
    z = np.asarray(figures.prompt_heatmap(aligned).data[0].z, dtype=float)
    expected = aligned.prompt_layers.query("prompt_index == 3")["transport_mean"].to_numpy()
    np.testing.assert_allclose(z[3, :-1], expected[:-1])


def test_prompt_heatmap_hover_escaped(aligned):
    hover = figures.prompt_heatmap(aligned).data[0].customdata[0][0]
    assert "&lt;b&gt;topic&lt;/b&gt; &amp; more" in hover


def test_prompt_heatmap_hover_truncated():
    run = make_run("long", prompt_texts=("word " * 100,))
    hover = figures.prompt_heatmap(run, text_chars=20).data[0].customdata[0][0]
    assert "…" in hover
    assert len(hover.split("<br>")[0]) < 40


def test_overlay_names_roles(reference, aligned):
    fig = figures.comparison_overlay(compare_runs(reference, aligned), reference, aligned)
    names = [trace.name for trace in _main_traces(fig)]
    assert names[0] == "reference: base"
    assert names[2] == "target: dpo"


def test_delta_figure_values(reference, aligned):
    comparison = compare_runs(reference, aligned)
    alpha_trace = _main_traces(figures.delta_figure(comparison, reference, aligned))[0]
    np.testing.assert_allclose(_values(alpha_trace.y), comparison.table["delta_alpha"].to_numpy())


def test_delta_figure_axis_titles(reference, aligned):
    layout = figures.delta_figure(compare_runs(reference, aligned), reference, aligned).layout
    assert (layout.yaxis.title.text, layout.yaxis2.title.text) == ("Δ alpha", "Δ transport")


def test_delta_figure_band_shaded(reference, aligned):
    fig = figures.delta_figure(compare_runs(reference, aligned), reference, aligned, axis="depth")
    rectangles = [shape for shape in fig.layout.shapes if shape.type == "rect"]
    assert (rectangles[0].x0, rectangles[0].x1) == pytest.approx((2 / 3, 1.0))


def test_delta_figure_without_intervals_says_so():
    ref = make_run("base", replicates=0)
    target = make_run("dpo", seed=1, replicates=0)
    fig = figures.delta_figure(compare_runs(ref, target), ref, target)
    assert any("no intervals" in annotation.text for annotation in fig.layout.annotations)


def test_settings_text_names_every_setting(reference):
    text = figures.settings_text(reference.manifest)
    for part in ("tail window 5%-50% of rank", "tokens skip-first", "dtype float32", "bootstrap 50 replicates"):
        assert part in text


def test_settings_text_bootstrap_off():
    assert "bootstrap off (no intervals)" in figures.settings_text(make_run(replicates=0).manifest)


def test_settings_footer_lists_differing_settings(reference):
    other = make_run("other", replicates=0)
    footer = figures.settings_footer([reference, other])
    assert footer.startswith("base: tail window")
    assert "<br>other: tail window" in footer


def test_settings_footer_shared_once(reference, aligned):
    footer = figures.settings_footer([reference, aligned])
    assert footer.count("tail window") == 1


def test_difference_heatmap_explains_failed_reference():
    reference = make_run("base", failed_layers=(2,))
    target = make_run("dpo", seed=1)
    trace = figures.checkpoint_heatmap([reference, target], reference=reference).data[0]
    assert trace.customdata[1][2] == "layer 2: no difference (this run: ok, reference: too_few)"


def test_difference_heatmap_identical_runs_scale():
    reference = make_run("base")
    trace = figures.checkpoint_heatmap([reference], reference=reference).data[0]
    assert (trace.zmin, trace.zmax) == (-1.0, 1.0)


def test_escape_keeps_quotes():
    assert figures.escape('say "hi" & it\'s <b>') == "say \"hi\" &amp; it's &lt;b&gt;"


def test_quote_label_literal_in_legend():
    run = make_run('the "base" model')
    names = [trace.name for trace in _main_traces(figures.profile_figure([run]))]
    assert names[0] == 'the "base" model'


def test_quote_label_literal_in_title():
    run = make_run('the "base" model')
    fig = figures.prompt_heatmap(run)
    assert 'the "base" model' in fig.layout.title.text
    assert "&quot;" not in fig.to_json()


def test_wrap_markup_breaks_at_words():
    wrapped = figures.wrap_markup("alpha beta gamma delta<br>epsilon", 11)
    assert wrapped.split("<br>") == ["alpha beta", "gamma delta", "epsilon"]


def test_wrap_markup_keeps_entities_whole():
    wrapped = figures.wrap_markup("x &lt;y&gt; z &amp; wwwww", 10)
    assert wrapped.split("<br>") == ["x &lt;y&gt; z &amp;", "wwwww"]


@pytest.mark.parametrize("width_px", [320, 560, 1000])
def test_footer_lines_fit_width(reference, aligned, width_px):
    fig = figures.profile_figure([reference, aligned], width_px=width_px)
    footer = fig.layout.annotations[-1].text
    longest = max(len(figures.html.unescape(line)) for line in footer.split("<br>"))
    assert longest <= figures.footer_chars(width_px)


def test_narrow_figure_short_axis_title(reference):
    fig = figures.profile_figure([reference], width_px=300)
    assert fig.layout.xaxis2.title.text == figures.AXIS_SHORT_TITLES["layer"]


def test_long_title_wrapped(reference, aligned):
    long_label = "a checkpoint label that is long enough to be cut in a narrow column " * 2
    fig = figures.checkpoint_heatmap([reference, aligned], reference=make_run(long_label), width_px=400)
    lines = fig.layout.title.text.split("<br>")
    assert len(lines) > 1
    assert max(len(line) for line in lines) <= int((400 - 20) / figures.TITLE_CHAR_PX)
