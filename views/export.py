"""Export page: figures as offline HTML, PNG or SVG, per-layer tables, and the one-file audit report.

Files are generated only when a download button is clicked (deferred data), so opening the
page stays fast and never starts a browser.
"""

from __future__ import annotations

from collections.abc import Callable

import plotly.graph_objects as go
import streamlit as st

from spinal import dashboard as ui
from spinal import figures, report
from spinal.stats import Comparison, ComparisonError, compare_runs

st.title("Export")
selection = ui.current_selection()
runs = ui.require_runs(selection, minimum=1, purpose="exports")
by_id = {run.run_id: run for run in runs}

comparison: Comparison | None = None
reference = by_id.get(selection.reference) if selection.reference else None
target = by_id.get(selection.target) if selection.target else None
if reference is not None and target is not None and reference.run_id != target.run_id:
    try:
        comparison = compare_runs(reference, target, band=selection.band)
    except ComparisonError as error:
        st.warning(f"No comparison figures: {ui.escape_markdown(error)}")

builders: dict[str, Callable[[], go.Figure]] = {
    "trajectories-3d": lambda: figures.trajectory_3d(runs, axis=selection.axis, band=selection.band),
    "profiles": lambda: figures.profile_figure(runs, axis=selection.axis, band=selection.band),
    "heatmap-alpha": lambda: figures.checkpoint_heatmap(runs, metric="alpha", axis=selection.axis),
    "heatmap-transport": lambda: figures.checkpoint_heatmap(runs, metric="transport", axis=selection.axis),
    "heatmap-prompts": lambda: figures.prompt_heatmap(runs[0], axis=selection.axis),
}
if comparison is not None:
    builders["heatmap-alpha-difference"] = lambda: figures.checkpoint_heatmap(
        runs, metric="alpha", axis=selection.axis, reference=reference
    )
    builders["heatmap-transport-difference"] = lambda: figures.checkpoint_heatmap(
        runs, metric="transport", axis=selection.axis, reference=reference
    )
    builders["compare-overlay"] = lambda: figures.comparison_overlay(comparison, reference, target, axis=selection.axis)
    builders["compare-delta"] = lambda: figures.delta_figure(comparison, reference, target, axis=selection.axis)


def _html_data(name: str) -> Callable[[], str]:
    return lambda: report.figure_html(builders[name]())


def _image_data(name: str, fmt: str) -> Callable[[], bytes]:
    return lambda: report.figure_image(builders[name](), fmt)


st.subheader("Figures")
images_ok, images_message = report.static_export_status()
if images_ok:
    st.caption(ui.escape_markdown(images_message) + " Rendering an image takes a few seconds (3D figures longer).")
else:
    st.warning(ui.escape_markdown(images_message))

for name in builders:
    label, html_column, png_column, svg_column = st.columns([3, 1, 1, 1])
    label.markdown(f"**{name}**")
    html_column.download_button(
        "HTML", _html_data(name), file_name=f"spinal-{name}.html", mime="text/html", key=f"export_html_{name}", on_click="ignore"
    )
    png_column.download_button(
        "PNG", _image_data(name, "png"), file_name=f"spinal-{name}.png", mime="image/png",
        key=f"export_png_{name}", disabled=not images_ok, on_click="ignore",
    )
    svg_column.download_button(
        "SVG", _image_data(name, "svg"), file_name=f"spinal-{name}.svg", mime="image/svg+xml",
        key=f"export_svg_{name}", disabled=not images_ok, on_click="ignore",
    )

st.subheader("Tables")
tables = {"layers": lambda: report.layers_table(runs)}
if comparison is not None:
    tables["comparison"] = lambda: comparison.table
for name, build in tables.items():
    label, csv_column, parquet_column = st.columns([3, 1, 1])
    label.markdown(f"**{name}** (per layer)")
    csv_column.download_button(
        "CSV", lambda build=build: report.table_csv(build()), file_name=f"spinal-{name}.csv", mime="text/csv",
        key=f"export_csv_{name}", on_click="ignore",
    )
    parquet_column.download_button(
        "Parquet", lambda build=build: report.table_parquet(build()), file_name=f"spinal-{name}.parquet",
        mime="application/vnd.apache.parquet", key=f"export_parquet_{name}", on_click="ignore",
    )

st.subheader("Audit report")
st.caption(
    "One HTML file with the selected checkpoints, their settings, every figure above, the headline numbers "
    "and provenance (model ids, fingerprints, prompt-set hashes, library versions). It opens offline."
)


def _report_html() -> str:
    return report.build_report(
        runs,
        [(name, build()) for name, build in builders.items()],
        comparison=comparison,
        band=selection.band,
        axis=selection.axis,
    )


st.download_button(
    "Download audit report", _report_html, file_name="spinal-report.html", mime="text/html",
    key="export_report", type="primary", on_click="ignore",
)
ui.show_settings(runs)
