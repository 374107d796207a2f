"""AppTest tests of the dashboard: every page, the shared sidebar, the URL selection and tracing.

Figure checks read the Plotly JSON that Streamlit sends (``proto.spec``). Plotly >= 6 encodes
numeric arrays as base64 typed arrays, which ``decode`` turns back into numpy arrays.

Tests that only need some stored runs take ``app_store``: the ``seeded_store`` fixture with real
traces when conftest provides one, else a synthetic store. Tests that need particular runs
(failed fits, other depths, markup in labels) use synthetic stores.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest
from synthetic_runs import make_run, seed_store, write_run

import spinal.jobs
import spinal.report
from spinal.errors import PromptSetError
from spinal.jobs import JobOutcome, JobRegistry
from spinal.settings import BootstrapSettings, TokenSettings, TraceSettings
from spinal.stats import terminal_band_mask
from spinal.store import TraceStore

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
PAGES = ["overview", "trajectories", "heatmaps", "compare", "side_by_side", "training", "trace", "export"]
VIEW_PAGES = ["trajectories", "heatmaps", "compare", "side_by_side", "export"]
TIMEOUT_S = 60
XSS_LABEL = "<script>alert(1)</script>"


# ---------------------------------------------------------------------------------------------
# Helpers


def decode(value):
    """Return a Plotly JSON array (plain list or base64 typed array) as a float numpy array."""
    if isinstance(value, dict) and "bdata" in value:
        array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        if shape:
            array = array.reshape([int(size) for size in str(shape).split(",")])
        return array.astype(float)

    rows = []
    for row in value:
        if isinstance(row, list):
            rows.append([np.nan if item is None else item for item in row])
        else:
            rows.append(np.nan if row is None else row)

    return np.array(rows, dtype=float)


def charts(at: AppTest) -> list[dict]:
    """Return the figure JSON of every Plotly chart on the page, in order."""
    return [json.loads(element.proto.spec) for element in at.get("plotly_chart")]


def main_traces(spec: dict) -> list[dict]:
    return [trace for trace in spec["data"] if trace.get("mode") == "lines+markers"]


def open_app(store: TraceStore, page: str = "overview", **params: str) -> AppTest:
    """Run the app on ``page`` with the given store and query parameters."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    at.query_params["store"] = str(store.root)
    for name, value in params.items():
        at.query_params[name] = value
    at.run()
    if page != "overview":
        at.switch_page(f"views/{page}.py").run()
    return at


def texts(elements) -> list[str]:
    return [element.value for element in elements]


def assert_no_exception(at: AppTest) -> None:
    assert texts(at.exception) == []


# ---------------------------------------------------------------------------------------------
# Stores


@pytest.fixture(scope="module")
def synthetic_store(tmp_path_factory):
    store = TraceStore(tmp_path_factory.mktemp("synthetic-store"))
    runs = seed_store(store)
    store.roles = {role: run.run_id for role, run in runs.items()}
    return store


@pytest.fixture()
def app_store(request, synthetic_store):
    """The lead's store of real traces when available, else the synthetic store."""
    try:
        return request.getfixturevalue("seeded_store")
    except pytest.FixtureLookupError:
        return synthetic_store
    except pytest.skip.Exception:
        return synthetic_store


@pytest.fixture()
def empty_store(tmp_path):
    return TraceStore(tmp_path / "empty")


def _pair_of_same_depth(store: TraceStore) -> tuple[str, str]:
    infos = store.list_runs()
    for first in infos:
        for second in infos:
            if first.run_id != second.run_id and first.n_layers == second.n_layers:
                return first.run_id, second.run_id
    pytest.skip("the store has no two runs of equal depth")


# ---------------------------------------------------------------------------------------------
# Empty store and every page


@pytest.mark.parametrize("page", PAGES)
def test_empty_store_page_runs(empty_store, page):
    at = open_app(empty_store, page)
    assert_no_exception(at)


@pytest.mark.parametrize("page", ["overview", *VIEW_PAGES])
def test_empty_store_says_what_next(empty_store, page):
    message = " ".join(texts(open_app(empty_store, page).info))
    for hint in ("spinal trace", "**Trace** page", "spinal demo"):
        assert hint in message


def test_missing_store_says_not_exist(empty_store):
    message = " ".join(texts(open_app(empty_store).info))
    assert "does not exist" in message
    assert "has no runs yet" not in message


def test_empty_store_commands_name_store(tmp_path):
    store = TraceStore(tmp_path / "store")
    store.root.mkdir(parents=True)
    message = " ".join(texts(open_app(store).info))
    assert "has no runs yet" in message
    assert f"`spinal demo --store {store.root}`" in message
    assert f"--prompts PROMPTS.txt --store {store.root}`" in message


def test_store_file_not_offered_for_tracing(tmp_path):
    path = tmp_path / "store.txt"
    path.write_text("not a store", encoding="utf-8")
    at = open_app(SimpleNamespace(root=path))
    assert "is a file, not a folder" in " ".join(texts(at.warning))
    assert "spinal trace" not in " ".join(texts(at.info) + texts(at.warning))


@pytest.mark.parametrize("page", PAGES)
def test_page_runs_without_exception(app_store, page):
    reference, target = _pair_of_same_depth(app_store)
    at = open_app(app_store, page, runs=f"{reference},{target}", ref=reference, target=target)
    assert_no_exception(at)


@pytest.mark.parametrize("page", PAGES)
def test_page_shows_no_error(app_store, page):
    reference, target = _pair_of_same_depth(app_store)
    at = open_app(app_store, page, runs=f"{reference},{target}", ref=reference, target=target)
    assert texts(at.error) == []


def test_overview_lists_every_run(app_store):
    at = open_app(app_store)
    assert len(at.dataframe[0].value) == len(app_store.list_runs())


def test_overview_shows_run_warnings(tmp_path):
    store = TraceStore(tmp_path / "store")
    warned = make_run("warned")
    warned.manifest["warnings"] = ["Alpha intervals skipped on rows [0]: too few replicates."]
    write_run(store, warned)
    at = open_app(store)
    assert at.expander[0].label == "1 trace warning(s) in 1 run(s)"
    assert list(at.dataframe[1].value["warning"]) == ["Alpha intervals skipped on rows [0]: too few replicates."]


def test_overview_shows_settings_column(synthetic_store):
    table = open_app(synthetic_store).dataframe[0].value
    assert table["settings"].str.startswith("tail window").all()
    assert (table["warnings"] == 0).all()


def test_page_without_selection_asks_for_runs(synthetic_store):
    at = open_app(synthetic_store, "trajectories", runs="")
    assert "Select at least 1 checkpoint" in " ".join(texts(at.info))


def test_compare_with_one_run_asks_for_two(synthetic_store):
    at = open_app(synthetic_store, "compare", runs=synthetic_store.roles["reference"])
    assert "Select at least 2 checkpoints" in " ".join(texts(at.info))


# ---------------------------------------------------------------------------------------------
# Sidebar and URL


def test_url_restores_selection(synthetic_store):
    roles = synthetic_store.roles
    at = open_app(
        synthetic_store, "trajectories", runs=f"{roles['target']},{roles['reference']}", ref=roles["reference"],
        target=roles["target"], axis="depth", band="0.50,1.00",
    )
    assert at.multiselect(key="selection_runs").value == [roles["target"], roles["reference"]]


def test_url_restores_roles(synthetic_store):
    roles = synthetic_store.roles
    at = open_app(synthetic_store, runs=f"{roles['target']},{roles['reference']}", ref=roles["reference"], target=roles["target"])
    assert (at.selectbox(key="selection_reference").value, at.selectbox(key="selection_target").value) == (
        roles["reference"],
        roles["target"],
    )


def test_url_restores_axis_and_band(synthetic_store):
    at = open_app(synthetic_store, axis="depth", band="0.50,1.00")
    assert (at.radio(key="selection_axis").value, at.slider(key="selection_band").value) == ("depth", (0.5, 1.0))


def test_url_run_prefix_resolved(synthetic_store):
    reference = synthetic_store.roles["reference"]
    at = open_app(synthetic_store, runs=reference[:8])
    assert at.multiselect(key="selection_runs").value == [reference]


def test_url_unknown_run_dropped(synthetic_store):
    reference = synthetic_store.roles["reference"]
    at = open_app(synthetic_store, runs=f"{reference},ffffffffffffffff")
    assert at.multiselect(key="selection_runs").value == [reference]


def test_url_unknown_run_warned(synthetic_store):
    reference = synthetic_store.roles["reference"]
    at = open_app(synthetic_store, "compare", runs=f"{reference},ffffffffffffffff", ref="eeeeeeeeeeeeeeee")
    warnings = " ".join(texts(at.sidebar.warning))
    assert "ffffffffffffffff, eeeeeeeeeeeeeeee" in warnings
    assert str(synthetic_store.root).replace("_", "\\_") in warnings


def test_url_known_runs_not_warned(synthetic_store):
    roles = synthetic_store.roles
    at = open_app(synthetic_store, runs=f"{roles['reference']},{roles['target']}", ref=roles["reference"])
    assert texts(at.sidebar.warning) == []


def test_url_invalid_band_ignored(synthetic_store):
    at = open_app(synthetic_store, band="0.9,0.1")
    assert at.slider(key="selection_band").value == (0.67, 1.0)


def test_selection_written_to_url(synthetic_store):
    roles = synthetic_store.roles
    at = open_app(synthetic_store, runs=f"{roles['reference']},{roles['target']}")
    assert at.query_params["runs"] == f"{roles['reference']},{roles['target']}"


def test_axis_change_written_to_url(synthetic_store):
    at = open_app(synthetic_store, "trajectories")
    at.radio(key="selection_axis").set_value("depth").run()
    assert at.query_params["axis"] == "depth"


def test_band_change_written_to_url(synthetic_store):
    at = open_app(synthetic_store)
    at.slider(key="selection_band").set_value((0.5, 0.9)).run()
    assert at.query_params["band"] == "0.50,0.90"


def test_default_target_has_reference_depth(synthetic_store):
    at = open_app(synthetic_store)
    assert at.selectbox(key="selection_target").value == synthetic_store.roles["target"]


def test_selection_survives_page_switch(synthetic_store):
    at = open_app(synthetic_store, "trajectories")
    at.radio(key="selection_axis").set_value("depth").run()
    at.switch_page("views/heatmaps.py").run()
    assert at.radio(key="selection_axis").value == "depth"


# ---------------------------------------------------------------------------------------------
# Trajectories


def test_trajectories_chart_types(app_store):
    reference, target = _pair_of_same_depth(app_store)
    specs = charts(open_app(app_store, "trajectories", runs=f"{reference},{target}"))
    assert [trace["type"] for trace in specs[0]["data"]] == ["scatter3d", "scatter3d"]


def test_trajectories_projection_is_2d(app_store):
    specs = charts(open_app(app_store, "trajectories"))
    assert {trace["type"] for trace in specs[1]["data"]} == {"scatter"}


def test_trajectories_axis_titles(app_store):
    scene = charts(open_app(app_store, "trajectories", axis="depth"))[0]["layout"]["scene"]
    titles = (scene["xaxis"]["title"]["text"], scene["yaxis"]["title"]["text"], scene["zaxis"]["title"]["text"])
    assert titles == ("relative depth", "alpha", "transport")


def test_trajectories_projection_axis_titles(app_store):
    layout = charts(open_app(app_store, "trajectories"))[1]["layout"]
    # The profiles sit in a narrow column, so the metric titles are short; the footer explains them.
    assert (layout["yaxis"]["title"]["text"], layout["yaxis2"]["title"]["text"]) == ("alpha", "transport")


def test_trajectories_data_match_store(app_store):
    run_id = app_store.list_runs()[0].run_id
    layers = app_store.get(run_id).layers
    trace = charts(open_app(app_store, "trajectories", runs=run_id))[0]["data"][0]
    expected = np.where(layers["alpha_status"] == "ok", layers["alpha"], np.nan)
    np.testing.assert_allclose(decode(trace["y"]), expected)


def test_trajectories_x_is_layer_index(app_store):
    run_id = app_store.list_runs()[0].run_id
    trace = charts(open_app(app_store, "trajectories", runs=run_id))[0]["data"][0]
    np.testing.assert_array_equal(decode(trace["x"]), app_store.get(run_id).layers["layer"].to_numpy())


def test_trajectories_failed_fit_is_gap(synthetic_store):
    trace = charts(open_app(synthetic_store, "trajectories", runs=synthetic_store.roles["reference"]))[0]["data"][0]
    assert np.isnan(decode(trace["y"])[0])


def test_trajectories_failed_fit_listed(synthetic_store):
    at = open_app(synthetic_store, "trajectories", runs=synthetic_store.roles["reference"])
    assert at.expander[0].label == "1 layer(s) without an alpha fit (shown as gaps)"


def test_trajectories_camera_keeps_user_view(synthetic_store):
    layout = charts(open_app(synthetic_store, "trajectories"))[0]["layout"]
    assert layout["scene"]["uirevision"] == "camera-oblique"


def test_trajectories_camera_preset(synthetic_store):
    at = open_app(synthetic_store, "trajectories")
    at.button_group(key="trajectory_camera").set_value("alpha vs transport").run()
    assert charts(at)[0]["layout"]["scene"]["uirevision"] == "camera-alpha vs transport"


def test_trajectories_show_settings(synthetic_store):
    captions = " ".join(texts(open_app(synthetic_store, "trajectories").caption))
    for part in ("tail window 5%-50% of rank", "tokens skip-first", "dtype float32"):
        assert part in captions


# ---------------------------------------------------------------------------------------------
# Heatmaps


def test_heatmaps_chart_types(app_store):
    reference, target = _pair_of_same_depth(app_store)
    specs = charts(open_app(app_store, "heatmaps", runs=f"{reference},{target}", ref=reference, target=target))
    assert [spec["data"][0]["type"] for spec in specs] == ["heatmap", "heatmap", "heatmap"]


def test_heatmaps_checkpoint_values(app_store):
    reference, target = _pair_of_same_depth(app_store)
    spec = charts(open_app(app_store, "heatmaps", runs=f"{reference},{target}"))[0]
    layers = app_store.get(target).layers
    expected = np.where(layers["alpha_status"] == "ok", layers["alpha"], np.nan)
    np.testing.assert_allclose(decode(spec["data"][0]["z"])[1], expected)


def test_heatmaps_axis_titles(app_store):
    layout = charts(open_app(app_store, "heatmaps"))[0]["layout"]
    assert (layout["xaxis"]["title"]["text"], layout["yaxis"]["title"]["text"]) == (
        "layer (0 = embedding output, L = last block)",
        "checkpoint",
    )


def test_heatmaps_difference_of_reference_is_zero(app_store):
    reference, target = _pair_of_same_depth(app_store)
    spec = charts(open_app(app_store, "heatmaps", runs=f"{reference},{target}", ref=reference, target=target))[1]
    reference_row = decode(spec["data"][0]["z"])[0]
    np.testing.assert_allclose(reference_row[np.isfinite(reference_row)], 0.0)


def test_heatmaps_transport_metric(synthetic_store):
    run_id = synthetic_store.roles["reference"]
    at = open_app(synthetic_store, "heatmaps", runs=run_id)
    at.button_group(key="heatmap_metric").set_value("transport").run()
    z = decode(charts(at)[0]["data"][0]["z"])[0]
    np.testing.assert_allclose(z[:-1], synthetic_store.get(run_id).layers["transport"].to_numpy()[:-1])


def test_heatmaps_prompt_hover_escaped(synthetic_store):
    spec = charts(open_app(synthetic_store, "heatmaps", runs=synthetic_store.roles["reference"]))[-1]
    hover = spec["data"][0]["customdata"][0][0]
    assert "&lt;b&gt;topic&lt;/b&gt;" in hover


def test_heatmaps_prompt_rows(synthetic_store):
    spec = charts(open_app(synthetic_store, "heatmaps", runs=synthetic_store.roles["reference"]))[-1]
    assert decode(spec["data"][0]["z"]).shape == (12, 7)


# ---------------------------------------------------------------------------------------------
# Compare


def _compare(store: TraceStore, reference: str, target: str) -> AppTest:
    return open_app(store, "compare", runs=f"{reference},{target}", ref=reference, target=target)


def test_compare_verdict_supported(synthetic_store):
    at = _compare(synthetic_store, synthetic_store.roles["reference"], synthetic_store.roles["target"])
    assert texts(at.subheader) == ["Signature supported"]


def test_compare_caption_uses_heading_words(synthetic_store):
    roles = synthetic_store.roles
    at = _compare(synthetic_store, roles["reference"], roles["target"])
    heading = at.subheader[0].value
    caption = " ".join(texts(at.caption))
    assert f"verdict: {heading}." in caption
    assert "verdict status" not in caption


def test_compare_headline_metrics(synthetic_store):
    at = _compare(synthetic_store, synthetic_store.roles["reference"], synthetic_store.roles["target"])
    assert [metric.label for metric in at.metric] == [
        "Δ alpha in band",
        "Δ transport in band",
        "Share of |Δ alpha| in band",
        "Share of |Δ transport| in band",
    ]


def test_compare_delta_matches_stats(app_store):
    from spinal.stats import compare_runs

    reference, target = _pair_of_same_depth(app_store)
    spec = charts(_compare(app_store, reference, target))[1]
    expected = compare_runs(app_store.get(reference), app_store.get(target)).table["delta_alpha"].to_numpy()
    np.testing.assert_allclose(decode(main_traces(spec)[0]["y"]), expected)


def test_compare_chart_types(app_store):
    reference, target = _pair_of_same_depth(app_store)
    specs = charts(_compare(app_store, reference, target))
    assert [{trace["type"] for trace in spec["data"]} for spec in specs] == [{"scatter"}, {"scatter"}]


def test_compare_overlay_names_roles(synthetic_store):
    spec = charts(_compare(synthetic_store, synthetic_store.roles["reference"], synthetic_store.roles["target"]))[0]
    assert [trace["name"] for trace in main_traces(spec)][::2] == ["reference: base", "target: dpo"]


def test_compare_delta_axis_titles(synthetic_store):
    layout = charts(_compare(synthetic_store, synthetic_store.roles["reference"], synthetic_store.roles["target"]))[1]["layout"]
    assert (layout["yaxis"]["title"]["text"], layout["yaxis2"]["title"]["text"]) == ("Δ alpha", "Δ transport")


def test_compare_rejects_other_depth(synthetic_store):
    at = _compare(synthetic_store, synthetic_store.roles["reference"], synthetic_store.roles["deeper"])
    assert "need the same layer count" in " ".join(texts(at.error))


def test_compare_other_depth_draws_nothing(synthetic_store):
    at = _compare(synthetic_store, synthetic_store.roles["reference"], synthetic_store.roles["deeper"])
    assert charts(at) == []


def test_compare_warns_on_other_prompts(tmp_path):
    store = TraceStore(tmp_path / "store")
    reference = write_run(store, make_run("base"))
    other = write_run(store, make_run("other-prompts", seed=1, prompt_sha256="e" * 64))
    at = _compare(store, reference.run_id, other.run_id)
    assert any("different prompt sets" in warning for warning in texts(at.warning))


def test_compare_warns_on_other_settings(tmp_path):
    store = TraceStore(tmp_path / "store")
    settings = TraceSettings(tokens=TokenSettings(positions="last"), bootstrap=BootstrapSettings(replicates=50))
    reference = write_run(store, make_run("base"))
    other = write_run(store, make_run("last-token", seed=1, settings=settings))
    at = _compare(store, reference.run_id, other.run_id)
    assert any("tokens.positions" in warning for warning in texts(at.warning))


def test_compare_without_bootstrap_no_intervals(tmp_path):
    store = TraceStore(tmp_path / "store")
    reference = write_run(store, make_run("base", replicates=0))
    target = write_run(store, make_run("dpo", seed=1, replicates=0, alpha_shift=0.4, transport_shift=-0.03))
    at = _compare(store, reference.run_id, target.run_id)
    assert texts(at.subheader) == ["No intervals: signature not assessed"]


def test_compare_same_run_twice(synthetic_store):
    run_id = synthetic_store.roles["reference"]
    at = open_app(synthetic_store, "compare", runs=f"{run_id},{synthetic_store.roles['target']}", ref=run_id, target=run_id)
    assert "Pick different checkpoints" in " ".join(texts(at.info))


# ---------------------------------------------------------------------------------------------
# Side by side


def test_side_by_side_one_chart_per_run(synthetic_store):
    roles = synthetic_store.roles
    at = open_app(synthetic_store, "side_by_side", runs=f"{roles['reference']},{roles['target']},{roles['deeper']}")
    assert len(charts(at)) == 3


def test_side_by_side_identical_axes(synthetic_store):
    roles = synthetic_store.roles
    specs = charts(open_app(synthetic_store, "side_by_side", runs=f"{roles['reference']},{roles['target']},{roles['deeper']}"))
    ranges = {(tuple(spec["layout"]["yaxis"]["range"]), tuple(spec["layout"]["xaxis"]["range"])) for spec in specs}
    assert len(ranges) == 1


def test_side_by_side_chart_types(app_store):
    reference, target = _pair_of_same_depth(app_store)
    specs = charts(open_app(app_store, "side_by_side", runs=f"{reference},{target}"))
    assert all({trace["type"] for trace in spec["data"]} == {"scatter"} for spec in specs)


def test_side_by_side_caps_columns(tmp_path):
    store = TraceStore(tmp_path / "store")
    run_ids = [write_run(store, make_run(f"run-{index}", seed=index)).run_id for index in range(5)]
    at = open_app(store, "side_by_side", runs=",".join(run_ids))
    assert len(charts(at)) == 4


# ---------------------------------------------------------------------------------------------
# Export


def test_export_offers_every_format(synthetic_store):
    roles = synthetic_store.roles
    at = _compare(synthetic_store, roles["reference"], roles["target"])
    at.switch_page("views/export.py").run()
    downloads = {button.proto.label for button in at.get("download_button")}
    renders = {button.proto.label for button in at.button}
    assert {"HTML", "CSV", "Parquet", "Download audit report"} <= downloads
    assert {"PNG", "SVG"} <= renders


def test_export_one_row_per_figure(synthetic_store):
    roles = synthetic_store.roles
    at = _compare(synthetic_store, roles["reference"], roles["target"])
    at.switch_page("views/export.py").run()
    labels = [button.proto.label for button in at.get("download_button")]
    # Five figures of the runs, four of the comparison and one side-by-side figure per selected run.
    assert labels.count("HTML") == 9 + 2


def test_export_without_browser_explains(synthetic_store, monkeypatch):
    monkeypatch.setattr("spinal.report.find_browser", lambda: None)
    at = open_app(synthetic_store, "export")
    assert any("needs Chromium" in warning for warning in texts(at.warning))


def test_export_without_browser_disables_images(synthetic_store, monkeypatch):
    monkeypatch.setattr("spinal.report.find_browser", lambda: None)
    at = open_app(synthetic_store, "export")
    image_buttons = [button.proto for button in at.button if button.proto.label in ("PNG", "SVG")]
    assert image_buttons
    assert all(button.disabled for button in image_buttons)


def _export_page(store: TraceStore) -> AppTest:
    roles = store.roles
    return open_app(store, "export", runs=f"{roles['reference']},{roles['target']}", ref=roles["reference"], target=roles["target"])


def test_export_image_failure_shown(synthetic_store, monkeypatch):
    def failing(fig, fmt="png", **options):
        raise spinal.report.ExportError("PNG export with /bin/false failed (ChromeNotFound: no browser); export HTML instead.")

    monkeypatch.setattr("spinal.report.find_browser", lambda: "/bin/false")
    monkeypatch.setattr("spinal.report.figure_image", failing)
    at = _export_page(synthetic_store)
    at.button(key="export_png_profiles").click().run()
    assert texts(at.error) == ["PNG export with /bin/false failed (ChromeNotFound: no browser); export HTML instead."]


def test_export_image_rendered_then_saved(synthetic_store, monkeypatch):
    monkeypatch.setattr("spinal.report.find_browser", lambda: "/usr/bin/chromium")
    monkeypatch.setattr("spinal.report.figure_image", lambda fig, fmt="png", **options: b"\x89PNG fake")
    at = _export_page(synthetic_store)
    at.button(key="export_png_profiles").click().run()
    saves = [button.proto for button in at.get("download_button") if button.proto.label == "Save PNG"]
    assert len(saves) == 1
    assert texts(at.error) == []


def test_export_lists_side_by_side(synthetic_store):
    labels = [element.value for element in _export_page(synthetic_store).markdown]
    assert {"**side-by-side-1**", "**side-by-side-2**"} <= set(labels)


def test_export_lists_training_figures(series_store):
    labels = [element.value for element in open_app(series_store, "export", series="sft").markdown]
    assert {"**training-band**", "**training-heatmap-alpha**", "**training-heatmap-transport**"} <= set(labels)


def test_export_training_figure_builds(series_store, monkeypatch):
    built = []
    monkeypatch.setattr("spinal.report.find_browser", lambda: "/usr/bin/chromium")
    monkeypatch.setattr("spinal.report.figure_image", lambda fig, fmt="png", **options: built.append(fig) or b"png")
    at = open_app(series_store, "export", series="sft")
    at.button(key="export_png_training-band").click().run()
    assert len(built) == 1
    assert "sft" in built[0].layout.title.text


def test_export_other_depth_skips_comparison(synthetic_store):
    roles = synthetic_store.roles
    at = open_app(synthetic_store, "export", runs=f"{roles['reference']},{roles['deeper']}", ref=roles["reference"], target=roles["deeper"])
    assert any(warning.startswith("No comparison figures") for warning in texts(at.warning))


# ---------------------------------------------------------------------------------------------
# Training: a real series from the tiny demo build (pretraining and TRL DPO, traced)


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory):
    """A store containing the tiny demo's series: the base model (step 0) and its DPO checkpoints."""
    from spinal.demo import DemoConfig, build_demo

    root = tmp_path_factory.mktemp("demo")
    store = TraceStore(root / "store")
    store.demo = build_demo(root / "build", store, progress=False, config=DemoConfig.tiny())
    return store


def _demo_steps(store: TraceStore) -> list[int]:
    return [0, *sorted(store.demo.checkpoint_run_ids)]


def _band_mean(layers, metric: str, band: tuple[float, float]) -> float:
    status = layers[f"{metric}_status"].to_numpy()
    usable = terminal_band_mask(layers["depth"].to_numpy(), band) & (status == "ok")
    return float(layers[metric].to_numpy()[usable].mean()) if usable.any() else float("nan")


def _band_chart(at: AppTest) -> dict:
    return next(spec for spec in charts(at) if spec["data"][0]["type"] == "scatter")


def _trace_named(spec: dict, name: str) -> dict:
    return next(trace for trace in spec["data"] if trace.get("name") == name)


def test_training_demo_runs_without_exception(demo_store):
    assert_no_exception(open_app(demo_store, "training"))


def test_training_demo_default_series(demo_store):
    at = open_app(demo_store, "training")
    assert at.selectbox(key="training_series").value == demo_store.demo.series_name


def test_training_demo_chart_types(demo_store):
    specs = charts(open_app(demo_store, "training"))
    assert [spec["data"][0]["type"] for spec in specs] == ["scatter", "heatmap", "heatmap"]


def test_training_demo_heatmap_x_is_step(demo_store):
    heatmap = charts(open_app(demo_store, "training"))[1]["data"][0]
    assert list(decode(heatmap["x"])) == _demo_steps(demo_store)


def test_training_demo_heatmap_matches_store(demo_store):
    heatmap = charts(open_app(demo_store, "training"))[1]["data"][0]
    for column, run_id in enumerate(demo_store.demo.run_ids):
        layers = demo_store.get(run_id).layers
        expected = np.where(layers["alpha_status"] == "ok", layers["alpha"], np.nan)
        np.testing.assert_allclose(decode(heatmap["z"])[:, column], expected)


def test_training_demo_transport_heatmap_last_gap(demo_store):
    heatmap = charts(open_app(demo_store, "training"))[2]["data"][0]
    assert np.isnan(decode(heatmap["z"])[-1]).all()


def test_training_demo_heatmap_axis_titles(demo_store):
    layout = charts(open_app(demo_store, "training"))[1]["layout"]
    assert layout["xaxis"]["title"]["text"] == "training step"
    assert layout["yaxis"]["title"]["text"] in ("layer (0 = embedding output, L = last block)", "layer (0 = embedding)")


def test_training_demo_depth_axis(demo_store):
    heatmap = charts(open_app(demo_store, "training", axis="depth"))[1]["data"][0]
    n_layers = demo_store.get(demo_store.demo.base_run_id).manifest["model"]["n_layers"]
    np.testing.assert_allclose(decode(heatmap["y"]), np.arange(n_layers + 1) / n_layers)


def test_training_demo_heatmap_hover(demo_store):
    heatmap = charts(open_app(demo_store, "training"))[1]["data"][0]
    assert heatmap["customdata"][0][0].startswith("step 0 (epoch 0)<br>layer 0 (depth 0.00)<br>alpha ")


def test_training_demo_band_alpha_matches_store(demo_store):
    spec = _band_chart(open_app(demo_store, "training"))
    expected = [_band_mean(demo_store.get(run_id).layers, "alpha", (0.67, 1.0)) for run_id in demo_store.demo.run_ids]
    np.testing.assert_allclose(decode(_trace_named(spec, "band mean alpha")["y"]), expected)


def test_training_demo_band_transport_full_band(demo_store):
    spec = _band_chart(open_app(demo_store, "training", band="0.00,1.00"))
    expected = [_band_mean(demo_store.get(run_id).layers, "transport", (0.0, 1.0)) for run_id in demo_store.demo.run_ids]
    np.testing.assert_allclose(decode(_trace_named(spec, "band mean transport")["y"]), expected)


def test_training_demo_band_interval_from_replicates(demo_store):
    spec = _band_chart(open_app(demo_store, "training"))
    run = demo_store.get(demo_store.demo.base_run_id)
    band_layers = run.layers["layer"][terminal_band_mask(run.layers["depth"].to_numpy(), (0.67, 1.0))].to_numpy()
    means = run.replicates.pivot(index="replicate", columns="layer", values="alpha")[band_layers].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    polygon = decode(next(trace for trace in spec["data"] if trace.get("name") == "interval")["y"])
    assert np.isclose(polygon, low).any()
    assert np.isclose(polygon, high).any()


def test_training_demo_empty_transport_band_explained(demo_store):
    at = open_app(demo_store, "training")
    assert "No layer of the terminal band has a usable transport value" in " ".join(texts(at.info))


def test_training_demo_full_band_no_empty_note(demo_store):
    at = open_app(demo_store, "training", band="0.00,1.00")
    assert "No layer of the terminal band" not in " ".join(texts(at.info))


def test_training_demo_departure_metrics(demo_store):
    at = open_app(demo_store, "training", band="0.00,1.00")
    assert [metric.label for metric in at.metric] == ["First departure of band alpha", "First departure of band transport"]


def test_training_demo_series_in_url(demo_store):
    at = open_app(demo_store, "training")
    assert at.query_params["series"] == demo_store.demo.series_name


def test_training_demo_rule_explained(demo_store):
    at = open_app(demo_store, "training")
    assert "not a statistical test" in " ".join(element.value for element in at.markdown)


def test_training_demo_band_title(demo_store):
    spec = _band_chart(open_app(demo_store, "training"))
    assert spec["layout"]["title"]["text"] == "Terminal band (relative depth 0.67 to 1.00) against step: demo-dpo"


# ---------------------------------------------------------------------------------------------
# Training: constructed series


def _write_series(store: TraceStore, name: str, steps, *, created: str, shifts=None, **options) -> list[str]:
    shifts = shifts or [0.0] * len(steps)
    run_ids = []
    for step, shift in zip(steps, shifts, strict=True):
        run = make_run(f"{name} step {step}", seed=step + 1, alpha_shift=shift, series={"name": name, "step": step, "epoch": None}, **options)
        run.manifest["created"] = created
        run_ids.append(write_run(store, run).run_id)

    return run_ids


@pytest.fixture(scope="module")
def series_store(tmp_path_factory):
    """An older 3-step series and a newer 5-step one whose alpha jumps by 0.1 at step 40."""
    store = TraceStore(tmp_path_factory.mktemp("series-store"))
    store.older = _write_series(store, "older", [0, 1, 2], created="2025-01-01T00:00:00+00:00")
    store.newer = _write_series(
        store, "sft", [0, 10, 20, 30, 40], created="2025-02-01T00:00:00+00:00", shifts=[0, 0, 0, 0, 0.1], failed_layers=(0,)
    )
    return store


def test_training_empty_store_says_what_next(empty_store):
    message = " ".join(texts(open_app(empty_store, "training").info))
    for hint in ("spinal demo", "spinal.callbacks.SpinalCallback", "spinal trace OUTPUT_DIR"):
        assert hint in message


def test_training_store_without_series(synthetic_store):
    message = " ".join(texts(open_app(synthetic_store, "training").info))
    assert "has no training series" in message


def test_training_store_without_series_no_chart(synthetic_store):
    assert charts(open_app(synthetic_store, "training")) == []


def test_training_single_run_series(tmp_path):
    store = TraceStore(tmp_path / "store")
    _write_series(store, "lonely", [7], created="2025-01-01T00:00:00+00:00")
    at = open_app(store, "training")
    assert "A series needs at least two steps" in " ".join(texts(at.info))


def test_training_single_run_series_no_chart(tmp_path):
    store = TraceStore(tmp_path / "store")
    _write_series(store, "lonely", [7], created="2025-01-01T00:00:00+00:00")
    assert charts(open_app(store, "training")) == []


def test_training_newest_without_selection(series_store):
    at = open_app(series_store, "training", runs="")
    assert at.selectbox(key="training_series").value == "sft"


def test_training_default_follows_sidebar(series_store):
    at = open_app(series_store, "training", runs=",".join(series_store.older[:2]))
    assert at.selectbox(key="training_series").value == "older"


def test_training_url_restores_series(series_store):
    at = open_app(series_store, "training", runs="", series="older")
    assert at.selectbox(key="training_series").value == "older"


def test_training_url_unknown_series_ignored(series_store):
    at = open_app(series_store, "training", runs="", series="no-such-series")
    assert at.query_params["series"] == "sft"


def test_training_pick_written_to_url(series_store):
    at = open_app(series_store, "training", runs="")
    at.selectbox(key="training_series").set_value("older").run()
    assert at.query_params["series"] == "older"


def test_training_series_survives_page_switch(series_store):
    at = open_app(series_store, "training", runs="")
    at.selectbox(key="training_series").set_value("older").run()
    at.switch_page("views/heatmaps.py").run()
    at.switch_page("views/training.py").run()
    assert at.selectbox(key="training_series").value == "older"


def test_training_step_change_marked(series_store):
    at = open_app(series_store, "training", series="sft")
    assert at.metric[0].value == "step 40"


def test_training_step_change_line(series_store):
    spec = _band_chart(open_app(series_store, "training", series="sft"))
    assert [(shape["x0"], shape["line"]["dash"]) for shape in spec["layout"]["shapes"]] == [(40, "dash")]


def test_training_step_change_label(series_store):
    spec = _band_chart(open_app(series_store, "training", series="sft"))
    assert "departs from running baseline (step 40, k = 3)" in [note["text"] for note in spec["layout"]["annotations"]]


def test_training_flat_series_no_departure(series_store):
    at = open_app(series_store, "training", series="sft")
    assert at.metric[1].value == "no departure"


def test_training_larger_k_hides_change(series_store):
    at = open_app(series_store, "training", series="sft")
    at.number_input(key="training_k").set_value(20.0).run()
    assert at.metric[0].value == "no departure"


def test_training_short_series_too_few_steps(tmp_path):
    store = TraceStore(tmp_path / "store")
    _write_series(store, "pair", [0, 5], created="2025-01-01T00:00:00+00:00")
    at = open_app(store, "training")
    assert [metric.value for metric in at.metric] == ["too few steps", "too few steps"]


def test_training_failed_fit_is_gap(series_store):
    heatmap = charts(open_app(series_store, "training", series="sft"))[1]["data"][0]
    assert np.isnan(decode(heatmap["z"])[0]).all()


def test_training_failed_fit_listed(series_store):
    at = open_app(series_store, "training", series="sft")
    assert at.expander[-1].label == "5 layer(s) without an alpha fit (shown as gaps)"


def test_training_split_series_warns(tmp_path):
    store = TraceStore(tmp_path / "store")
    _write_series(store, "mixed", [0, 1], created="2025-01-01T00:00:00+00:00")
    _write_series(store, "mixed", [2, 3], created="2025-01-02T00:00:00+00:00", n_layers=9)
    at = open_app(store, "training")
    assert "differ in layer count" in " ".join(texts(at.warning))


def test_training_split_series_both_offered(tmp_path):
    store = TraceStore(tmp_path / "store")
    _write_series(store, "mixed", [0, 1], created="2025-01-01T00:00:00+00:00")
    _write_series(store, "mixed", [2, 3], created="2025-01-02T00:00:00+00:00", n_layers=9)
    assert len(open_app(store, "training").selectbox(key="training_series").options) == 2


def test_training_without_intervals_stated(tmp_path):
    store = TraceStore(tmp_path / "store")
    _write_series(store, "no-bootstrap", [0, 1, 2], created="2025-01-01T00:00:00+00:00", replicates=0)
    at = open_app(store, "training")
    assert "No bootstrap interval for band alpha at 3 step(s)" in " ".join(texts(at.info))


def test_training_without_intervals_hollow(tmp_path):
    store = TraceStore(tmp_path / "store")
    _write_series(store, "no-bootstrap", [0, 1, 2], created="2025-01-01T00:00:00+00:00", replicates=0)
    trace = _trace_named(_band_chart(open_app(store, "training")), "band mean alpha")
    assert trace["marker"]["symbol"] == ["circle-open"] * 3


def test_training_markup_never_raw(tmp_path):
    store = TraceStore(tmp_path / "store")
    _write_series(store, XSS_LABEL, [0, 1, 2], created="2025-01-01T00:00:00+00:00")
    at = open_app(store, "training")
    assert all(XSS_LABEL not in element.proto.spec for element in at.get("plotly_chart"))


# ---------------------------------------------------------------------------------------------
# Markup in labels


def test_script_label_never_raw_in_figures(tmp_path):
    store = TraceStore(tmp_path / "store")
    reference = write_run(store, make_run("base"))
    hostile = write_run(store, make_run(XSS_LABEL, seed=1, alpha_shift=0.4, transport_shift=-0.03))
    for page in ("trajectories", "heatmaps", "compare", "side_by_side"):
        at = open_app(store, page, runs=f"{reference.run_id},{hostile.run_id}", ref=reference.run_id, target=hostile.run_id)
        for element in at.get("plotly_chart"):
            assert XSS_LABEL not in element.proto.spec


def test_quote_in_label_shown_literally(tmp_path):
    store = TraceStore(tmp_path / "store")
    reference = write_run(store, make_run('the "base" model'))
    target = write_run(store, make_run("it's <b>tuned</b>", seed=1, alpha_shift=0.4))
    at = open_app(store, "compare", runs=f"{reference.run_id},{target.run_id}", ref=reference.run_id, target=target.run_id)
    spec = charts(at)[0]
    names = list(dict.fromkeys(trace["name"] for trace in main_traces(spec)))
    assert names == ['reference: the "base" model', "target: it's &lt;b&gt;tuned&lt;/b&gt;"]
    assert "&quot;" not in json.dumps(charts(at))


def test_url_in_label_not_linked(tmp_path):
    store = TraceStore(tmp_path / "store")
    first = write_run(store, make_run("see https://example.org/model"))
    second = write_run(store, make_run("www.example.org tuned", seed=1, settings=TraceSettings(tokens=TokenSettings(positions="all"))))
    at = open_app(store, "trajectories", runs=f"{first.run_id},{second.run_id}")
    captions = " ".join(texts(at.caption))
    assert "https\u200b://example.org" in captions
    assert "www\u200b.example.org" in captions


# ---------------------------------------------------------------------------------------------
# Trace page


@pytest.fixture()
def fresh_registry(monkeypatch):
    registry = JobRegistry()
    monkeypatch.setattr(spinal.jobs, "REGISTRY", registry)
    return registry


def _submit_trace(at: AppTest, source: str) -> AppTest:
    at.text_input(key="trace_source").input(source)
    submit = next(button for button in at.button if button.proto.label == "Start trace")
    submit.click().run()
    return at


def _wait_for_jobs(registry: JobRegistry) -> None:
    for snapshot in registry.snapshots():
        registry.wait(snapshot.key, TIMEOUT_S)


def test_trace_page_lists_builtin_sets(empty_store, fresh_registry):
    at = open_app(empty_store, "trace")
    assert "pydoc-topics" in at.selectbox(key="trace_builtin").options


def test_trace_page_requires_model(empty_store, fresh_registry):
    at = _submit_trace(open_app(empty_store, "trace"), "")
    assert texts(at.error) == ["model is missing: enter a local checkpoint directory or a hub id."]


def test_trace_page_runs_job_into_store(tmp_path, fresh_registry, monkeypatch):
    store = TraceStore(tmp_path / "store")
    stored = make_run("traced-from-ui")

    def fake_trace(request, progress, models=None):
        progress("forward", 1, 1)
        run = write_run(TraceStore(request.store_root), stored)
        return JobOutcome(run.run_id, cached=False)

    monkeypatch.setattr(spinal.jobs, "run_engine_trace", fake_trace)
    at = _submit_trace(open_app(store, "trace"), "models/anything")
    _wait_for_jobs(fresh_registry)
    at.run()
    assert f"Run {stored.run_id} computed." in texts(at.success)


def test_trace_page_new_run_in_sidebar(tmp_path, fresh_registry, monkeypatch):
    store = TraceStore(tmp_path / "store")
    stored = make_run("traced-from-ui")
    monkeypatch.setattr(
        spinal.jobs, "run_engine_trace",
        lambda request, progress, models=None: JobOutcome(write_run(TraceStore(request.store_root), stored).run_id, False),
    )
    at = _submit_trace(open_app(store, "trace"), "models/anything")
    _wait_for_jobs(fresh_registry)
    at.run()
    assert f"traced-from-ui · {stored.run_id[:8]}" in at.multiselect(key="selection_runs").options


def test_trace_page_shows_engine_error(tmp_path, fresh_registry, monkeypatch):
    def failing(request, progress, models=None):
        raise PromptSetError("prompt file /data/missing.txt not found: check the path.")

    monkeypatch.setattr(spinal.jobs, "run_engine_trace", failing)
    at = _submit_trace(open_app(TraceStore(tmp_path / "store"), "trace"), "models/anything")
    _wait_for_jobs(fresh_registry)
    at.run()
    assert texts(at.error) == ["prompt file /data/missing.txt not found: check the path."]


def test_trace_page_second_request_attaches(tmp_path, fresh_registry, monkeypatch):
    import threading

    release = threading.Event()
    calls = []

    def blocking(request, progress, models=None):
        calls.append(request.key)
        progress("forward", 0, 2)
        release.wait(TIMEOUT_S)
        return JobOutcome("0123456789abcdef", False)

    monkeypatch.setattr(spinal.jobs, "run_engine_trace", blocking)
    store = TraceStore(tmp_path / "store")
    _submit_trace(open_app(store, "trace"), "models/anything")
    _submit_trace(open_app(store, "trace"), "models/anything")
    release.set()
    _wait_for_jobs(fresh_registry)
    assert len(calls) == 1


def test_trace_page_progress_while_running(tmp_path, fresh_registry, monkeypatch):
    import threading

    release = threading.Event()

    def blocking(request, progress, models=None):
        progress("forward", 1, 4)
        release.wait(TIMEOUT_S)
        return JobOutcome("0123456789abcdef", False)

    monkeypatch.setattr(spinal.jobs, "run_engine_trace", blocking)
    at = _submit_trace(open_app(TraceStore(tmp_path / "store"), "trace"), "models/anything")
    time.sleep(0.5)
    at.run()
    bars = at.get("progress")
    release.set()
    _wait_for_jobs(fresh_registry)
    assert bars
    assert bars[0].proto.text == "forward 1/4"


def _finished_job(registry: JobRegistry, store: TraceStore, trace_fn, **changes) -> None:
    fields = {"source": "models/anything", "prompts": "builtin:pydoc-topics", "store_root": str(store.root), **changes}
    request = spinal.jobs.TraceRequest(**fields)
    snapshot, _ = registry.submit(request, trace_fn)
    registry.wait(snapshot.key, TIMEOUT_S)


def test_trace_page_upload_error_names_upload(tmp_path, fresh_registry):
    store = TraceStore(tmp_path / "store")
    saved = "/tmp/spinal-uploads/0123456789abcdef-my_prompts.txt"

    def failing(request, progress):
        raise PromptSetError(f"prompt file {request.prompts} has no prompts: add one prompt per line.")

    _finished_job(fresh_registry, store, failing, prompts=saved, prompts_name="my prompts.txt")
    at = open_app(store, "trace")
    assert texts(at.error) == ["prompt file uploaded file my prompts.txt has no prompts: add one prompt per line."]


def test_trace_page_cancel_is_info(tmp_path, fresh_registry):
    store = TraceStore(tmp_path / "store")

    def cancelled(request, progress):
        raise spinal.jobs.JobCancelled("trace of models/anything was cancelled.")

    _finished_job(fresh_registry, store, cancelled)
    at = open_app(store, "trace")
    assert texts(at.error) == []
    assert "trace of models/anything was cancelled." in texts(at.info)


def test_trace_page_clear_finished_jobs(tmp_path, fresh_registry):
    store = TraceStore(tmp_path / "store")
    _finished_job(fresh_registry, store, lambda request, progress: JobOutcome("feedfacefeedface", False))
    at = open_app(store, "trace")
    at.button(key="trace_clear_finished").click().run()
    assert fresh_registry.snapshots() == []
    assert "No trace jobs yet." in texts(at.caption)


def test_trace_page_attach_shows_toast(tmp_path, fresh_registry, monkeypatch):
    import threading

    release = threading.Event()

    def blocking(request, progress, models=None):
        progress("forward", 0, 2)
        release.wait(TIMEOUT_S)
        return JobOutcome("0123456789abcdef", False)

    monkeypatch.setattr(spinal.jobs, "run_engine_trace", blocking)
    store = TraceStore(tmp_path / "store")
    first = _submit_trace(open_app(store, "trace"), "models/anything")
    second = _submit_trace(open_app(store, "trace"), "models/anything")
    first_toasts, second_toasts = texts(first.toast), texts(second.toast)
    release.set()
    _wait_for_jobs(fresh_registry)
    assert first_toasts == []
    assert second_toasts == ["The same trace is already running: attached to the running job."]


def test_trace_page_real_engine(tmp_path, fresh_registry):
    from tiny_models import save_tiny

    model_dir = save_tiny("llama", tmp_path / "tiny-llama")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"prompt {index} with several more words" for index in range(8)) + "\n", encoding="utf-8")
    store = TraceStore(tmp_path / "store")

    at = open_app(store, "trace")
    at.radio(key="trace_prompt_kind").set_value("File path").run()
    at.text_input(key="trace_prompt_path").input(str(prompts))
    at.number_input(key="trace_replicates").set_value(10)
    at.number_input(key="trace_groups").set_value(4)
    _submit_trace(at, str(model_dir))
    _wait_for_jobs(fresh_registry)
    at.run()
    assert len(store.list_runs()) == 1


# ---------------------------------------------------------------------------------------------
# No torch in the page scripts


def test_pages_import_no_torch(synthetic_store):
    script = textwrap.dedent(
        f"""
        import sys
        from streamlit.testing.v1 import AppTest
        at = AppTest.from_file({APP!r}, default_timeout={TIMEOUT_S})
        at.query_params["store"] = {str(synthetic_store.root)!r}
        at.run()
        for page in {PAGES!r}:
            at.switch_page(f"views/{{page}}.py").run()
            assert not at.exception, [element.value for element in at.exception]
        print("torch" in sys.modules, "transformers" in sys.modules)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT, check=False
    )
    assert result.stdout.strip().splitlines()[-1] == "False False", result.stderr[-2000:]


def test_escape_markdown_path_and_link():
    from spinal.dashboard import escape_markdown

    assert escape_markdown("/data/my_file.txt [x](http://example.org)") == "/data/my\\_file.txt \\[x\\](http\u200b://example.org)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://example.org", "https\u200b://example.org"),
        ("go to www.example.org", "go to www\u200b.example.org"),
        ("mail me@example.org", "mail me@\u200bexample.org"),
        ("HTTP://EXAMPLE.ORG", "HTTP\u200b://EXAMPLE.ORG"),
        ("httpd.conf and wwwroot", "httpd.conf and wwwroot"),
    ],
)
def test_escape_markdown_autolinks(text, expected):
    from spinal.dashboard import escape_markdown

    assert escape_markdown(text) == expected


def test_trace_error_shown_literally(tmp_path, fresh_registry, monkeypatch):
    def failing(request, progress, models=None):
        raise PromptSetError("prompt file /data/my_prompt_file.txt not found: check the path.")

    monkeypatch.setattr(spinal.jobs, "run_engine_trace", failing)
    at = _submit_trace(open_app(TraceStore(tmp_path / "store"), "trace"), "models/anything")
    _wait_for_jobs(fresh_registry)
    at.run()
    assert texts(at.error) == ["prompt file /data/my\\_prompt\\_file.txt not found: check the path."]
