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

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest
from synthetic_runs import make_run, seed_store, write_run

import spinal.jobs
from spinal.errors import PromptSetError
from spinal.jobs import JobOutcome, JobRegistry
from spinal.settings import BootstrapSettings, TokenSettings, TraceSettings
from spinal.store import TraceStore

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
PAGES = ["overview", "trajectories", "heatmaps", "compare", "side_by_side", "trace", "export"]
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
    assert (layout["yaxis"]["title"]["text"], layout["yaxis2"]["title"]["text"]) == (
        "alpha (tail exponent)",
        "transport (Fisher-Rao)",
    )


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
    labels = [button.proto.label for button in at.get("download_button")]
    assert {"HTML", "PNG", "SVG", "CSV", "Parquet", "Download audit report"} <= set(labels)


def test_export_one_row_per_figure(synthetic_store):
    roles = synthetic_store.roles
    at = _compare(synthetic_store, roles["reference"], roles["target"])
    at.switch_page("views/export.py").run()
    labels = [button.proto.label for button in at.get("download_button")]
    assert labels.count("HTML") == 9


def test_export_without_browser_explains(synthetic_store, monkeypatch):
    monkeypatch.setattr("spinal.report.find_browser", lambda: None)
    at = open_app(synthetic_store, "export")
    assert any("needs Chromium" in warning for warning in texts(at.warning))


def test_export_without_browser_disables_images(synthetic_store, monkeypatch):
    monkeypatch.setattr("spinal.report.find_browser", lambda: None)
    at = open_app(synthetic_store, "export")
    image_buttons = [button.proto for button in at.get("download_button") if button.proto.label in ("PNG", "SVG")]
    assert image_buttons
    assert all(button.disabled for button in image_buttons)


def test_export_other_depth_skips_comparison(synthetic_store):
    roles = synthetic_store.roles
    at = open_app(synthetic_store, "export", runs=f"{roles['reference']},{roles['deeper']}", ref=roles["reference"], target=roles["deeper"])
    assert any(warning.startswith("No comparison figures") for warning in texts(at.warning))


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

    assert escape_markdown("/data/my_file.txt [x](http://example.org)") == "/data/my\\_file.txt \\[x\\](http://example.org)"


def test_trace_error_shown_literally(tmp_path, fresh_registry, monkeypatch):
    def failing(request, progress, models=None):
        raise PromptSetError("prompt file /data/my_prompt_file.txt not found: check the path.")

    monkeypatch.setattr(spinal.jobs, "run_engine_trace", failing)
    at = _submit_trace(open_app(TraceStore(tmp_path / "store"), "trace"), "models/anything")
    _wait_for_jobs(fresh_registry)
    at.run()
    assert texts(at.error) == ["prompt file /data/my\\_prompt\\_file.txt not found: check the path."]
