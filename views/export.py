"""Export page: figures as offline HTML, PNG or SVG, per-layer tables, and the one-file audit report.

HTML and table files are generated only when a download button is clicked (deferred data), so
opening the page stays fast and never starts a browser. PNG and SVG images render in the page
run when their button is clicked, then a "Save" button downloads them: a deferred download
cannot show an error on the page, and image export can fail (no working Chromium, kaleido).
"""

from __future__ import annotations

from collections.abc import Callable

import plotly.graph_objects as go
import streamlit as st

from spinal import dashboard as ui
from spinal import figures, report, series_figures
from spinal import series as series_analysis
from spinal.stats import Comparison, ComparisonError, compare_runs

MAX_SIDE_BY_SIDE = 4
"""Checkpoints exported as side-by-side figures, as on the Side by side page."""
_KEY_IMAGE = "export_rendered_image"

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


def _side_by_side_builder(index: int, shown: list) -> Callable[[], go.Figure]:
    def build() -> go.Figure:
        return figures.profile_figure(
            [shown[index]],
            axis=selection.axis,
            band=selection.band,
            ranges=figures.shared_ranges(shown, selection.axis),
            names=[figures.legend_names(shown)[index]],
            colours=[figures.colour_for(index)],
            title=figures.legend_names(shown)[index],
        )

    return build


if len(runs) >= 2:
    side_by_side_runs = runs[:MAX_SIDE_BY_SIDE]
    for position in range(len(side_by_side_runs)):
        builders[f"side-by-side-{position + 1}"] = _side_by_side_builder(position, side_by_side_runs)

# The series is the Training page's pick (or the URL's), else the default one. As on that page,
# every run of the series is exported, whatever the sidebar selects.
found_series = [item for item in series_analysis.find_series(selection.infos.values()) if len(item.run_ids) >= 2]
series_by_key = {item.key: item for item in found_series}
chosen_series = series_by_key.get(ui.selected_series() or "") or series_analysis.default_series(found_series, selection.run_ids)
if chosen_series is not None:
    series_runs = ui.open_runs(selection, chosen_series.run_ids)

    def _training_band() -> go.Figure:
        table = series_analysis.band_values(series_runs, chosen_series.steps, selection.band, epochs=chosen_series.epochs)
        onsets = series_analysis.series_onsets(table)
        return series_figures.series_band_figure(
            table, onsets, band=selection.band, runs=series_runs, name=chosen_series.name
        )

    def _training_heatmap(metric: str) -> Callable[[], go.Figure]:
        return lambda: series_figures.series_heatmap(
            series_runs, chosen_series.steps, metric=metric, axis=selection.axis, epochs=chosen_series.epochs,
            name=chosen_series.name,
        )

    builders["training-band"] = _training_band
    builders["training-heatmap-alpha"] = _training_heatmap("alpha")
    builders["training-heatmap-transport"] = _training_heatmap("transport")


def _html_data(name: str) -> Callable[[], str]:
    return lambda: report.figure_html(builders[name]())


selection_token = (selection.run_ids, selection.reference, selection.target, selection.axis, selection.band, ui.selected_series())


def _image_cell(column, name: str, fmt: str, enabled: bool) -> str | None:
    """Draw the render button of one image (and its Save button once rendered); return an error message."""
    token = (name, fmt, selection_token)
    mime = "image/png" if fmt == "png" else "image/svg+xml"
    error = None
    if column.button(fmt.upper(), key=f"export_{fmt}_{name}", disabled=not enabled, help=f"Render {name} as {fmt.upper()}."):
        with st.spinner(f"Rendering {name} as {fmt.upper()}..."):
            try:
                data = report.figure_image(builders[name](), fmt)
            except report.ExportError as failure:
                st.session_state.pop(_KEY_IMAGE, None)
                error = str(failure)
            else:
                # Only the latest image is kept, so each session keeps at most one in memory.
                st.session_state[_KEY_IMAGE] = (token, data)

    rendered = st.session_state.get(_KEY_IMAGE)
    if rendered is not None and rendered[0] == token:
        column.download_button(
            f"Save {fmt.upper()}", rendered[1], file_name=f"spinal-{name}.{fmt}", mime=mime,
            key=f"export_save_{fmt}_{name}", on_click="ignore", type="primary",
        )

    return error


st.subheader("Figures")
images_ok, images_message = report.static_export_status()
if images_ok:
    st.caption(
        ui.escape_markdown(images_message)
        + " PNG or SVG renders the image (a few seconds, 3D figures longer), then Save downloads it."
    )
else:
    st.warning(ui.escape_markdown(images_message))

for name in builders:
    label, html_column, png_column, svg_column = st.columns([3, 1, 1, 1])
    label.markdown(f"**{name}**")
    html_column.download_button(
        "HTML", _html_data(name), file_name=f"spinal-{name}.html", mime="text/html", key=f"export_html_{name}", on_click="ignore"
    )
    for column, fmt in ((png_column, "png"), (svg_column, "svg")):
        error = _image_cell(column, name, fmt, images_ok)
        if error:
            st.error(ui.escape_markdown(error))

st.subheader("Tables")
tables = {"layers": lambda: report.layers_table(runs)}
if comparison is not None:
    tables["comparison"] = lambda: report.comparison_table(comparison, reference, target)
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
