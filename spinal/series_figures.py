"""Plotly figures of a training series: step x layer heatmaps and terminal-band values against step.

Inputs come from ``spinal.series`` (runs of one series in step order, ``band_values`` tables and
``find_onset`` results); nothing here imports Streamlit. As in ``spinal.figures``, values whose
fit or transport did not succeed are gaps, never numbers, and user text is HTML-escaped.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from spinal.figures import (
    DEFAULT_WIDTH_PX,
    METRIC_TITLES,
    PALETTE,
    Axis,
    Metric,
    _add_footer,
    _add_interval_band,
    _base_layout,
    axis_title,
    escape,
)
from spinal.series import Onset
from spinal.stats import RunLike

logger = logging.getLogger(__name__)

STEP_TITLE = "training step"
METRIC_COLOURS: dict[str, str] = {"alpha": PALETTE[1], "transport": PALETTE[0]}
BASELINE_COLOUR = "#555555"
ONSET_COLOUR = "#CC0000"
ONSET_LABEL = "departs from running baseline"


def _step_text(step: int, epoch: float) -> str:
    return f"step {step} (epoch {epoch:.3g})" if np.isfinite(epoch) else f"step {step}"


def series_heatmap(
    runs: Sequence[RunLike],
    steps: Sequence[int],
    *,
    metric: Metric = "alpha",
    axis: Axis = "layer",
    epochs: Sequence[float | None] | None = None,
    name: str = "",
    width_px: int = DEFAULT_WIDTH_PX,
) -> go.Figure:
    """Draw a step x layer heatmap of alpha or transport for the runs of one series.

    Cells whose alpha fit or transport did not succeed are blank, and their hover text gives the
    status and the fit warning.

    Args:
        runs: Runs of one series in step order (the columns, left to right).
        steps: Training step of each run, shape (n_runs,).
        metric: ``alpha`` or ``transport``.
        axis: ``layer`` for the block index or ``depth`` for relative depth on the y axis.
        epochs: Training epoch of each run, for the hover; None leaves it out.
        name: Series name for the title (raw text; escaped here).
        width_px: Approximate rendered width in CSS pixels, for wrapping the title and footer.
    """
    layer_index = np.unique(np.concatenate([run.layers["layer"].to_numpy() for run in runs]))
    n_layers = int(layer_index.max()) if layer_index.size else 1
    y = layer_index / max(n_layers, 1) if axis == "depth" else layer_index.astype(float)
    epoch_values = [np.nan if epochs is None or epochs[index] is None else float(epochs[index]) for index in range(len(runs))]

    z = np.full((layer_index.size, len(runs)), np.nan)
    hover = np.full(z.shape, "", dtype=object)
    for column, (run, step, epoch) in enumerate(zip(runs, steps, epoch_values, strict=True)):
        # Reindexing by the union of layers leaves NaN (and a missing status) where a run lacks a layer.
        layers = run.layers.set_index("layer").reindex(layer_index)
        cells = zip(
            layer_index,
            layers[metric].to_numpy(dtype=float),
            layers[f"{metric}_status"].to_numpy(dtype=object),
            layers["alpha_warning"].to_numpy(dtype=object),
            layers["fit_r2"].to_numpy(dtype=float),
            strict=True,
        )
        for row, (layer, value, status, warning, r2) in enumerate(cells):
            position = f"{_step_text(int(step), epoch)}<br>layer {int(layer)} (depth {layer / max(n_layers, 1):.2f})"
            z[row, column], text = _cell(metric, value, status, warning if metric == "alpha" else "", r2)
            hover[row, column] = f"{position}<br>{text}"

    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[int(step) for step in steps],
            y=y,
            customdata=hover,
            hovertemplate="%{customdata}<extra></extra>",
            colorscale="Viridis",
            colorbar={"title": {"text": metric}},
            xgap=1,
            ygap=1,
        )
    )
    fig.update_xaxes(title_text=STEP_TITLE)
    height = max(360, min(900, 140 + 14 * layer_index.size))
    # The depth axis is vertical here: a short figure gets the short title, as a narrow one does.
    fig.update_yaxes(title_text=axis_title(axis, min(width_px, height)))
    fig.update_layout(height=height)
    title = f"{METRIC_TITLES[metric]} per step and layer"
    _base_layout(fig, f"{title}: {escape(name)}" if name else title, width_px=width_px)
    _add_footer(fig, runs, "blank cells: fit failed or no transport (hover gives the status)", width_px)
    return fig


def _cell(metric: str, value: float, status: object, warning: object, r2: float) -> tuple[float, str]:
    """Return a heatmap cell's value (NaN unless the status is ok) and its hover text."""
    if not isinstance(status, str):
        return np.nan, f"{metric}: no layer at this position"

    if status == "ok" and np.isfinite(value):
        fit = f", R² {r2:.3f}" if metric == "alpha" and np.isfinite(r2) else ""
        return float(value), f"{metric} {value:.4f} (status ok{fit})"

    reason = f"{escape(status)}: {escape(warning)}" if isinstance(warning, str) and warning else escape(status)
    return np.nan, f"{metric}: no value ({reason})"


def series_band_figure(
    table: pd.DataFrame,
    onsets: Mapping[str, Onset],
    *,
    band: tuple[float, float],
    runs: Sequence[RunLike] = (),
    name: str = "",
    width_px: int = DEFAULT_WIDTH_PX,
) -> go.Figure:
    """Draw terminal-band alpha and transport against step, with intervals and departure markers.

    Each panel shows the band mean per step and its bootstrap interval, shaded. Hollow markers
    mark runs without an interval. A dotted grey line shows the running baseline and dashed grey
    lines show baseline +- threshold. A dashed red vertical line marks the first departing step.

    Args:
        table: Output of ``spinal.series.band_values``.
        onsets: Output of ``spinal.series.series_onsets``, by metric.
        band: Terminal band as relative depth, for the title.
        runs: Runs of the series, for the settings footer; none leaves the settings out.
        name: Series name for the title (raw text; escaped here).
        width_px: Approximate rendered width in CSS pixels, for wrapping the title and footer.
    """
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1)
    for row, metric in enumerate(("alpha", "transport"), start=1):
        rows = table[table["metric"] == metric].sort_values("step")
        _add_band_panel(fig, rows, metric, row)
        onset = onsets.get(metric)
        if onset is not None:
            _add_baseline(fig, onset, metric, row)
            _add_onset_marker(fig, onset, row)

    fig.update_xaxes(title_text=STEP_TITLE, row=2, col=1)
    fig.update_yaxes(title_text=METRIC_TITLES["alpha"], row=1, col=1)
    fig.update_yaxes(title_text=METRIC_TITLES["transport"], row=2, col=1)
    fig.update_layout(height=680, uirevision="series-band")

    title = f"Terminal band (relative depth {band[0]:.2f} to {band[1]:.2f}) against step"
    legend = [f"band mean {metric}" for metric in ("alpha", "transport")] + ["running baseline", "threshold"]
    _base_layout(fig, f"{title}: {escape(name)}" if name else title, legend, width_px)

    k_text = ", ".join(f"{k:g}" for k in sorted({onset.k for onset in onsets.values()})) or "?"
    minimum_text = ", ".join(str(count) for count in sorted({onset.min_baseline for onset in onsets.values()})) or "?"
    rule = escape(
        "red dashed line: first step with |band mean - running baseline| > k x max(bootstrap sd, sd of earlier steps), "
        f"k = {k_text}; a reading aid, not a test."
    )
    baseline_text = escape(
        f"dotted grey line: running baseline, the mean of all earlier steps (needs {minimum_text} or more). "
        "Dashed grey lines: baseline +- threshold."
    )
    intervals = _interval_note(table)
    _add_footer(fig, runs, f"{rule}<br>{baseline_text}<br>{intervals}", width_px)
    return fig


def _add_band_panel(fig: go.Figure, rows: pd.DataFrame, metric: str, row: int) -> None:
    colour = METRIC_COLOURS[metric]
    steps = rows["step"].to_numpy(dtype=float)
    values = rows["value"].to_numpy(dtype=float)
    low = rows["low"].to_numpy(dtype=float)
    high = rows["high"].to_numpy(dtype=float)
    has_interval = np.isfinite(low) & np.isfinite(high)

    if not np.isfinite(values).any():
        fig.add_annotation(
            text=f"no {metric} value in the terminal band at any step: move the band start lower",
            xref=f"x{'' if row == 1 else row} domain",
            yref=f"y{'' if row == 1 else row} domain",
            x=0.5,
            y=0.5,
            showarrow=False,
            font={"color": "#444444"},
        )

    _add_interval_band(fig, steps, low, high, colour, f"band-{metric}", row)
    hover = [
        _band_hover(metric, record)
        for record in rows[["step", "epoch", "label", "value", "low", "high", "level", "band_layers", "interval_note"]].itertuples(index=False)
    ]
    fig.add_trace(
        go.Scatter(
            x=steps,
            y=values,
            mode="lines+markers",
            name=f"band mean {metric}",
            line={"color": colour, "width": 2.5},
            marker={
                "size": 9,
                "color": colour,
                "symbol": np.where(has_interval, "circle", "circle-open").tolist(),
                "line": {"color": colour, "width": 2},
            },
            customdata=hover,
            hovertemplate="%{customdata}<extra></extra>",
            connectgaps=False,
        ),
        row=row,
        col=1,
    )


def _band_hover(metric: str, record: tuple) -> str:
    step, epoch, label, value, low, high, level, band_layers, note = record
    head = f"{_step_text(int(step), float(epoch))}: {escape(label)}"
    if not np.isfinite(value):
        return f"{head}<br>{metric}: no value in the band ({escape(note)})"

    if np.isfinite(low) and np.isfinite(high):
        interval = f"{level:.0%} interval [{low:.4f}, {high:.4f}]"
    else:
        interval = f"no interval ({escape(note)})"

    return f"{head}<br>band mean {metric} {value:.4f}, {interval}<br>band layers {escape(band_layers)}"


def _add_baseline(fig: go.Figure, onset: Onset, metric: str, row: int) -> None:
    if not np.isfinite(onset.baselines).any():
        return

    steps = onset.steps.astype(float)
    baselines = onset.baselines
    style = {"color": BASELINE_COLOUR, "width": 1.5}
    fig.add_trace(
        go.Scatter(
            x=steps,
            y=baselines,
            mode="lines+markers",
            name="running baseline",
            legendgroup="baseline",
            showlegend=row == 1,
            line={**style, "dash": "dot"},
            marker={"size": 4, "color": BASELINE_COLOUR},
            hovertemplate=f"step %{{x}}<br>running baseline of {metric} %{{y:.4f}}<extra></extra>",
            connectgaps=False,
        ),
        row=row,
        col=1,
    )
    for sign, label in ((1.0, "upper"), (-1.0, "lower")):
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=baselines + sign * onset.thresholds,
                mode="lines",
                name="threshold",
                legendgroup="threshold",
                showlegend=row == 1 and sign > 0,
                line={"color": BASELINE_COLOUR, "width": 1, "dash": "dash"},
                customdata=onset.thresholds,
                hovertemplate=(
                    f"step %{{x}}<br>{label} threshold of {metric} %{{y:.4f}} "
                    f"(baseline {'+' if sign > 0 else '-'} {onset.k:g} x scale = %{{customdata:.4f}})<extra></extra>"
                ),
                connectgaps=False,
            ),
            row=row,
            col=1,
        )


def _add_onset_marker(fig: go.Figure, onset: Onset, row: int) -> None:
    if onset.status != "departs" or onset.step is None:
        return

    fig.add_vline(
        x=onset.step,
        line={"color": ONSET_COLOUR, "width": 2, "dash": "dash"},
        annotation_text=f"{ONSET_LABEL} (step {onset.step}, k = {onset.k:g})",
        annotation_position="top left",
        annotation_font={"color": ONSET_COLOUR, "size": 12},
        row=row,
        col=1,
    )


def _interval_note(table: pd.DataFrame) -> str:
    """Say which runs have no band interval, per metric, or that all have one."""
    missing = table[np.isfinite(table["value"]) & ~(np.isfinite(table["low"]) & np.isfinite(table["high"]))]
    if missing.empty:
        levels = sorted(set(table["level"]))
        level_text = ", ".join(f"{level:.0%}" for level in levels)
        return f"shaded: {level_text} bootstrap interval of the band mean"

    parts = []
    for metric, rows in missing.groupby("metric", sort=False):
        steps = ", ".join(str(int(step)) for step in rows["step"])
        parts.append(f"{metric} at step {steps}")

    return escape(f"shaded: bootstrap interval of the band mean; hollow markers have no interval ({'; '.join(parts)})")
