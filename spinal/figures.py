"""Plotly figures of depth traces, built from stored run tables without Streamlit.

Every function takes runs (anything with ``run_id``, ``manifest`` and the table attributes of
``spinal.store.Run``) and returns a ``plotly.graph_objects.Figure``. Rows whose alpha fit did not
succeed (``alpha_status != "ok"``) and rows without transport are drawn as gaps and listed as
flagged, never plotted as numbers. All user-supplied text (labels, prompts, paths) has ``&``,
``<`` and ``>`` escaped before it reaches a figure, because Plotly renders a subset of HTML in
names, titles and hover text. Quotes stay literal: Plotly shows ``&quot;`` as typed.

Figures take ``width_px``, the approximate rendered width in CSS pixels, because Plotly does not
wrap annotation or title text: footers and titles are broken into lines that fit that width.
"""

from __future__ import annotations

import html
import logging
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from spinal.stats import DEFAULT_BAND, Comparison, RunLike, terminal_band_mask

logger = logging.getLogger(__name__)

Axis = Literal["layer", "depth"]
Metric = Literal["alpha", "transport"]

# Okabe-Ito colours: distinguishable with the common colour-vision deficiencies and on projectors.
PALETTE: tuple[str, ...] = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#999999")

AXIS_TITLES: dict[str, str] = {
    "layer": "layer (0 = embedding output, L = last block)",
    "depth": "relative depth (layer / L)",
}
AXIS_SHORT_TITLES: dict[str, str] = {"layer": "layer (0 = embedding)", "depth": "relative depth"}
"""Depth-axis titles for figures narrower than ``NARROW_WIDTH_PX``."""
NARROW_WIDTH_PX = 520

DEFAULT_WIDTH_PX = 1000
"""Assumed figure width when the caller gives none (exports render 1200 px wide)."""
# Average glyph widths of Liberation Sans, estimated as 0.55 of the font size, and the plot's
# left margin, which the footer (anchored at the plot's left edge) cannot use.
FOOTER_CHAR_PX = 6.0
TITLE_CHAR_PX = 9.5
LEFT_MARGIN_PX = 90
METRIC_TITLES: dict[str, str] = {
    "alpha": "alpha (tail exponent)",
    "transport": "transport (Fisher-Rao)",
}
METRIC_DESCRIPTIONS: dict[str, str] = {
    "alpha": "alpha: tail exponent of the residual spectrum",
    "transport": "transport: Fisher-Rao distance of the logit lens to the next layer",
}

CAMERA_PRESETS: dict[str, dict[str, dict[str, float]]] = {
    "oblique": {"eye": {"x": 1.25, "y": -1.55, "z": 0.75}, "up": {"x": 0, "y": 0, "z": 1}},
    "alpha vs depth": {"eye": {"x": 0.0, "y": -2.4, "z": 0.0}, "up": {"x": 0, "y": 0, "z": 1}},
    "transport vs depth": {"eye": {"x": 0.0, "y": 0.0, "z": 2.4}, "up": {"x": 0, "y": 1, "z": 0}},
    "alpha vs transport": {"eye": {"x": 2.4, "y": 0.0, "z": 0.0}, "up": {"x": 0, "y": 0, "z": 1}},
}
"""Named 3D camera positions: an overview and one looking along each axis."""

BAND_FILL = "rgba(230, 159, 0, 0.12)"
SETTINGS_SEPARATOR = "; "
FONT = {"family": "Liberation Sans, Arial, sans-serif", "size": 14}


@dataclass(frozen=True)
class AxisRanges:
    """Shared axis ranges so several figures can be read against each other.

    Attributes:
        x: Range of the depth axis.
        alpha: Range of the alpha axis.
        transport: Range of the transport axis.
    """

    x: tuple[float, float]
    alpha: tuple[float, float]
    transport: tuple[float, float]


def escape(text: Any) -> str:
    """Return ``text`` as a string with ``&``, ``<`` and ``>`` escaped for Plotly's HTML subset.

    Quotes are left alone: Plotly text is never an HTML attribute, and it would show ``&quot;``
    literally. Without ``<`` no tag, and so no script, can start.
    """
    return html.escape(str(text), quote=False)


def wrap_markup(text: str, width_chars: int) -> str:
    """Break escaped Plotly text into ``<br>``-separated lines of at most ``width_chars`` characters.

    Existing ``<br>`` breaks are kept. Lines break at spaces, and words longer than a line (paths,
    hashes) are split. Character entities count as one character and are never split.
    """
    lines = []
    for line in text.split("<br>"):
        raw = html.unescape(line)
        pieces = textwrap.wrap(raw, width=max(10, width_chars), break_on_hyphens=False) or [""]
        lines.extend(escape(piece) for piece in pieces)

    return "<br>".join(lines)


def footer_chars(width_px: int) -> int:
    """Return the footer characters per line that fit a figure ``width_px`` wide."""
    return int((width_px - LEFT_MARGIN_PX) / FOOTER_CHAR_PX)


def axis_title(axis: Axis, width_px: int) -> str:
    """Return the depth-axis title, shortened for narrow figures."""
    return AXIS_SHORT_TITLES[axis] if width_px < NARROW_WIDTH_PX else AXIS_TITLES[axis]


def run_label(run: RunLike) -> str:
    """Return the raw (unescaped) label of a run, falling back to its model source."""
    label = run.manifest.get("label")
    if label:
        return str(label)

    model = run.manifest.get("model") or {}
    return str(model.get("source") or run.run_id)


def legend_names(runs: Sequence[RunLike]) -> list[str]:
    """Return one escaped display name per run, with the short run id added where labels repeat."""
    labels = [run_label(run) for run in runs]
    names = []
    for label, run in zip(labels, runs, strict=True):
        if labels.count(label) > 1:
            label = f"{label} ({run.run_id[:8]})"

        names.append(escape(label))

    return names


def colour_for(index: int) -> str:
    """Return the palette colour of the ``index``-th run."""
    return PALETTE[index % len(PALETTE)]


def _rgba(colour: str, alpha: float) -> str:
    red, green, blue = (int(colour[position : position + 2], 16) for position in (1, 3, 5))
    return f"rgba({red}, {green}, {blue}, {alpha:.3f})"


def _shade(colour: str, depth: np.ndarray) -> list[str]:
    # Shallow layers are pale, deep layers take the full colour.
    return [_rgba(colour, 0.3 + 0.7 * float(value)) for value in np.clip(depth, 0.0, 1.0)]


def axis_values(layers: pd.DataFrame, axis: Axis) -> np.ndarray:
    """Return the x values of a layers table: the layer index or the relative depth."""
    if axis == "depth":
        return layers["depth"].to_numpy(dtype=float)

    return layers["layer"].to_numpy(dtype=float)


def usable_alpha(layers: pd.DataFrame) -> np.ndarray:
    """Return alpha per row with NaN where ``alpha_status != "ok"``."""
    values = layers["alpha"].to_numpy(dtype=float).copy()
    values[(layers["alpha_status"] != "ok").to_numpy()] = np.nan
    return values


def usable_transport(layers: pd.DataFrame) -> np.ndarray:
    """Return transport per row with NaN where ``transport_status != "ok"``."""
    values = layers["transport"].to_numpy(dtype=float).copy()
    values[(layers["transport_status"] != "ok").to_numpy()] = np.nan
    return values


def _usable_interval(layers: pd.DataFrame, metric: Metric) -> tuple[np.ndarray, np.ndarray]:
    status_column = "alpha_status" if metric == "alpha" else "transport_status"
    failed = (layers[status_column] != "ok").to_numpy()
    low = layers[f"{metric}_ci_low"].to_numpy(dtype=float).copy()
    high = layers[f"{metric}_ci_high"].to_numpy(dtype=float).copy()
    low[failed] = np.nan
    high[failed] = np.nan
    return low, high


def _format_value(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if np.isfinite(value) else "n/a"


def _alpha_hover_text(layers: pd.DataFrame) -> list[str]:
    columns = zip(
        layers["alpha"].to_numpy(dtype=float),
        layers["alpha_status"].to_numpy(),
        layers["alpha_warning"].to_numpy(),
        layers["fit_r2"].to_numpy(dtype=float),
        layers["fit_k_min"].to_numpy(),
        layers["fit_k_max"].to_numpy(),
        strict=True,
    )
    texts = []
    for alpha, status, warning, r2, k_min, k_max in columns:
        if status == "ok":
            text = f"{alpha:.3f} (fit ok, R² {_format_value(r2, 3)}, ranks {k_min}-{k_max})"
        else:
            text = f"not fitted ({escape(status)}: {escape(warning)})"

        texts.append(text)

    return texts


def _transport_hover_text(layers: pd.DataFrame) -> list[str]:
    columns = zip(layers["transport"].to_numpy(dtype=float), layers["transport_status"].to_numpy(), strict=True)
    return [f"{value:.4f} (ok)" if status == "ok" else f"none ({escape(status)})" for value, status in columns]


def flagged_rows(run: RunLike) -> pd.DataFrame:
    """Return the layer rows of a run whose alpha fit did not succeed, with status and warning."""
    layers = run.layers
    failed = layers[layers["alpha_status"] != "ok"]
    return failed[["layer", "depth", "alpha_status", "alpha_warning"]].reset_index(drop=True)


def settings_text(manifest: dict[str, Any]) -> str:
    """Summarise the settings behind a run's numbers in one line.

    Covers the tail window of the alpha fit, the token positions, the forward dtype and the
    bootstrap, which together decide what every plotted number means.
    """
    settings = manifest.get("settings") or {}
    fit = settings.get("fit") or {}
    tokens = settings.get("tokens") or {}
    bootstrap = settings.get("bootstrap") or {}
    model = manifest.get("model") or {}

    window = (
        f"tail window {float(fit.get('drop_top', 0)):.0%}-{float(fit.get('fit_until', 0)):.0%} of rank "
        f"(min {fit.get('min_points', '?')} points, {'centred' if fit.get('center', True) else 'uncentred'})"
    )
    token_text = f"tokens {tokens.get('positions', '?')} (max {tokens.get('max_tokens', '?')})"
    dtype_text = f"dtype {model.get('dtype', '?')}, Gram {settings.get('gram_dtype', '?')}"
    replicates = int(bootstrap.get("replicates", 0) or 0)
    if replicates:
        bootstrap_text = (
            f"bootstrap {replicates} replicates over {bootstrap.get('groups', '?')} prompt groups, "
            f"{float(bootstrap.get('level', 0.95)):.0%}"
        )
    else:
        bootstrap_text = "bootstrap off (no intervals)"

    return SETTINGS_SEPARATOR.join((window, token_text, dtype_text, bootstrap_text))


def settings_footer(runs: Sequence[RunLike], width_px: int = DEFAULT_WIDTH_PX) -> str:
    """Return the escaped settings line shared by ``runs``, or one line per distinct setting.

    Lines are wrapped to fit a figure ``width_px`` wide, because Plotly annotations do not wrap.
    """
    texts: dict[str, list[str]] = {}
    for name, run in zip(legend_names(runs), runs, strict=True):
        texts.setdefault(settings_text(run.manifest), []).append(name)

    if len(texts) == 1:
        lines = [_split_settings(escape(next(iter(texts))))]
    else:
        lines = [f"{', '.join(names)}: {_split_settings(escape(text))}" for text, names in texts.items()]

    return wrap_markup("<br>".join(lines), footer_chars(width_px))


def _split_settings(text: str) -> str:
    # The tail window on one line, tokens, dtype and bootstrap on the next.
    window, _, rest = text.partition(SETTINGS_SEPARATOR)
    return f"{window}<br>{rest}" if rest else window


def _add_footer(fig: go.Figure, runs: Sequence[RunLike], extra: str = "", width_px: int = DEFAULT_WIDTH_PX) -> None:
    footer = settings_footer(runs, width_px)
    if extra:
        footer = f"{footer}<br>{wrap_markup(extra, footer_chars(width_px))}"

    lines = footer.count("<br>") + 1
    fig.add_annotation(
        text=footer,
        xref="paper",
        yref="paper",
        x=0.0,
        y=0.0,
        yshift=-60,
        xanchor="left",
        yanchor="top",
        showarrow=False,
        align="left",
        font={"size": 11, "color": "#444444"},
    )
    fig.update_layout(margin={"b": 80 + 16 * lines})


def _flag_note(runs: Sequence[RunLike]) -> str:
    notes = []
    for name, run in zip(legend_names(runs), runs, strict=True):
        failed = flagged_rows(run)
        if not failed.empty:
            layer_list = ", ".join(str(int(layer)) for layer in failed["layer"])
            notes.append(f"{name}: layers {layer_list}")

    if not notes:
        return ""

    return "alpha not fitted (gaps): " + "; ".join(notes)


def band_x_range(runs: Sequence[RunLike], axis: Axis, band: tuple[float, float]) -> tuple[float, float]:
    """Return the terminal band in x-axis units.

    On the layer axis the band depends on the layer count. Runs of one model share it, and for
    runs of different depth the deepest run's count is used.
    """
    if axis == "depth":
        return band

    n_layers = max(int(run.layers["layer"].max()) for run in runs)
    return band[0] * n_layers, band[1] * n_layers


LEGEND_CHAR_PX = 8.3
"""Average legend glyph width assumed when reserving space above a plot."""


def _base_layout(fig: go.Figure, title: str, legend_entries: Sequence[str] = (), width_px: int = DEFAULT_WIDTH_PX) -> None:
    # Plotly does not wrap the title, and the horizontal legend above the plot grows upward into
    # it. So the title is wrapped to the width, and the top margin grows by one row per extra
    # title line and per estimated legend row.
    wrapped_title = wrap_markup(title, int((width_px - 20) / TITLE_CHAR_PX))
    title_lines = wrapped_title.count("<br>") + 1
    legend_rows = _legend_rows(legend_entries, width_px)
    fig.update_layout(
        title={"text": wrapped_title, "x": 0.0, "xanchor": "left", "y": 0.99, "yanchor": "top", "yref": "container"},
        template="plotly_white",
        font=FONT,
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0.0},
        hoverlabel={"font": {"size": 13}},
        margin={"t": 60 + 22 * (title_lines - 1) + 26 * legend_rows},
    )


def _legend_rows(entries: Sequence[str], width_px: int) -> int:
    # Plotly keeps each legend entry whole, so entries are packed into rows greedily. An entry
    # takes its text plus about 6 characters for the line symbol and the gap (an estimate).
    row_px = max(100.0, width_px - 80.0)
    rows, used = 0, row_px
    for entry in entries:
        entry_px = (len(html.unescape(entry)) + 6) * LEGEND_CHAR_PX
        if used + entry_px > row_px:
            rows, used = rows + 1, 0.0
        used += entry_px

    return rows


def trajectory_3d(
    runs: Sequence[RunLike],
    *,
    axis: Axis = "layer",
    band: tuple[float, float] = DEFAULT_BAND,
    camera: str = "oblique",
    width_px: int = DEFAULT_WIDTH_PX,
) -> go.Figure:
    """Draw each run as a path through (depth, alpha, transport) space.

    One colour per run; markers darken with depth and grow inside the terminal band. The last
    layer has no transport, so it is absent from the path.

    Args:
        runs: Runs to draw, in legend order.
        axis: ``layer`` for the block index or ``depth`` for relative depth on the x axis.
        band: Terminal band as relative depth.
        camera: Key of ``CAMERA_PRESETS``; changing it resets the view, while other reruns keep
            the camera the user set (``uirevision``).
        width_px: Approximate rendered width in CSS pixels, for wrapping the title and footer.
    """
    fig = go.Figure()
    for index, (name, run) in enumerate(zip(legend_names(runs), runs, strict=True)):
        layers = run.layers.sort_values("layer")
        depth = layers["depth"].to_numpy(dtype=float)
        in_band = terminal_band_mask(depth, band)
        colour = colour_for(index)
        customdata = np.column_stack(
            [
                layers["layer"].to_numpy(),
                np.round(depth, 3),
                _alpha_hover_text(layers),
                _transport_hover_text(layers),
                np.where(in_band, "inside", "outside"),
            ]
        )
        fig.add_trace(
            go.Scatter3d(
                x=axis_values(layers, axis),
                y=usable_alpha(layers),
                z=usable_transport(layers),
                mode="lines+markers",
                name=name,
                line={"color": colour, "width": 5},
                marker={
                    "color": _shade(colour, depth),
                    "size": np.where(in_band, 9, 4),
                    "line": {"color": colour, "width": 1},
                },
                customdata=customdata,
                hovertemplate=(
                    "layer %{customdata[0]} (depth %{customdata[1]})<br>alpha %{customdata[2]}"
                    "<br>transport %{customdata[3]}<br>terminal band: %{customdata[4]}"
                ),
                connectgaps=False,
            )
        )

    preset = camera if camera in CAMERA_PRESETS else "oblique"
    fig.update_layout(
        scene={
            "xaxis": {"title": {"text": "layer" if axis == "layer" else "relative depth"}},
            "yaxis": {"title": {"text": "alpha"}},
            "zaxis": {"title": {"text": "transport"}},
            "camera": CAMERA_PRESETS[preset],
            "uirevision": f"camera-{preset}",
            "aspectmode": "cube",
        },
        uirevision="trajectories",
        height=680,
    )
    _base_layout(fig, "Depth trajectories (large markers: terminal band)", legend_names(runs), width_px)
    fig.update_layout(margin={"l": 10, "r": 10})
    axes_note = (
        f"x: {AXIS_TITLES[axis]}<br>y: {METRIC_DESCRIPTIONS['alpha']}<br>z: {METRIC_DESCRIPTIONS['transport']}"
    )
    flag_note = _flag_note(runs)
    _add_footer(fig, runs, axes_note + (f"<br>{flag_note}" if flag_note else ""), width_px)
    return fig


def profile_figure(
    runs: Sequence[RunLike],
    *,
    axis: Axis = "layer",
    band: tuple[float, float] = DEFAULT_BAND,
    show_ci: bool = True,
    ranges: AxisRanges | None = None,
    names: Sequence[str] | None = None,
    colours: Sequence[str] | None = None,
    title: str = "Alpha and transport per layer",
    width_px: int = DEFAULT_WIDTH_PX,
) -> go.Figure:
    """Draw alpha and transport against depth in two stacked panels.

    Failed alpha fits are gaps in the line and ``x`` marks along the bottom of the alpha panel;
    the terminal band is shaded.

    Args:
        runs: Runs to draw.
        axis: ``layer`` or ``depth`` on the x axis.
        band: Terminal band as relative depth.
        show_ci: Draw each run's per-layer bootstrap intervals as shaded bands.
        ranges: Fixed axis ranges, so side-by-side figures share their scales.
        names: Escaped display names replacing the run labels (e.g. "reference: base").
        colours: Line colours per run; the palette order when None.
        title: Figure title (escaped by the caller when it contains user text).
        width_px: Approximate rendered width in CSS pixels: text is wrapped to it, and figures
            narrower than ``NARROW_WIDTH_PX`` get the short depth-axis title.
    """
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06)
    # A hidden overlay axis in [0, 1] carries the failed-fit marks, so they sit at the bottom of
    # the alpha panel without an alpha value.
    fig.update_layout(yaxis3={"overlaying": "y", "range": [0, 1], "visible": False, "fixedrange": True})

    display_names = list(names) if names is not None else legend_names(runs)
    line_colours = list(colours) if colours is not None else [colour_for(index) for index in range(len(runs))]
    for name, run, colour in zip(display_names, runs, line_colours, strict=True):
        _add_profile_traces(fig, run, name, colour, axis, show_ci)

    _add_flag_marks(fig, runs, display_names, line_colours, axis)

    low, high = band_x_range(runs, axis, band)
    for row in (1, 2):
        fig.add_vrect(x0=low, x1=high, fillcolor=BAND_FILL, line_width=0, layer="below", row=row, col=1)

    fig.update_xaxes(title_text=axis_title(axis, width_px), row=2, col=1)
    # Narrow figures have short panels, where the long metric titles run into each other.
    narrow = width_px < NARROW_WIDTH_PX
    fig.update_yaxes(title_text="alpha" if narrow else METRIC_TITLES["alpha"], row=1, col=1)
    fig.update_yaxes(title_text="transport" if narrow else METRIC_TITLES["transport"], row=2, col=1)
    if ranges is not None:
        fig.update_xaxes(range=list(ranges.x))
        fig.update_yaxes(range=list(ranges.alpha), row=1, col=1)
        fig.update_yaxes(range=list(ranges.transport), row=2, col=1)

    fig.update_layout(height=640, uirevision="profiles")
    _base_layout(fig, title, display_names, width_px)
    notes = "shaded: terminal band" + ("; bands around lines: bootstrap intervals" if show_ci else "")
    descriptions = f"{METRIC_DESCRIPTIONS['alpha']}<br>{METRIC_DESCRIPTIONS['transport']}"
    _add_footer(fig, runs, f"{descriptions}<br>{notes}", width_px)
    return fig


def _add_profile_traces(fig: go.Figure, run: RunLike, name: str, colour: str, axis: Axis, show_ci: bool) -> None:
    layers = run.layers.sort_values("layer")
    x = axis_values(layers, axis)
    customdata = np.column_stack(
        [layers["layer"].to_numpy(), np.round(layers["depth"].to_numpy(dtype=float), 3), _alpha_hover_text(layers), _transport_hover_text(layers)]
    )
    group = f"run-{name}"

    for row, metric, values in ((1, "alpha", usable_alpha(layers)), (2, "transport", usable_transport(layers))):
        if show_ci:
            _add_interval_band(fig, x, *_usable_interval(layers, metric), colour, group, row)

        hover_column = 2 if metric == "alpha" else 3
        fig.add_trace(
            go.Scatter(
                x=x,
                y=values,
                mode="lines+markers",
                name=name,
                legendgroup=group,
                showlegend=row == 1,
                line={"color": colour, "width": 2.5},
                marker={"size": 7, "color": colour},
                customdata=customdata,
                hovertemplate=(
                    f"layer %{{customdata[0]}} (depth %{{customdata[1]}})<br>{metric} %{{customdata[{hover_column}]}}"
                ),
                connectgaps=False,
            ),
            row=row,
            col=1,
        )


def _add_flag_marks(
    fig: go.Figure, runs: Sequence[RunLike], names: Sequence[str], colours: Sequence[str], axis: Axis
) -> None:
    """Mark failed alpha fits of all runs with one trace of x marks at the bottom of the alpha panel."""
    x_values: list[float] = []
    marker_colours: list[str] = []
    customdata: list[tuple[str, int, str]] = []
    for run, name, colour in zip(runs, names, colours, strict=True):
        layers = run.layers.sort_values("layer")
        failed = layers[layers["alpha_status"] != "ok"]
        x_values.extend(axis_values(failed, axis))
        marker_colours.extend([colour] * len(failed))
        customdata.extend(zip([name] * len(failed), failed["layer"].to_numpy(), _alpha_hover_text(failed), strict=True))

    if not x_values:
        return

    fig.add_trace(
        go.Scatter(
            x=x_values,
            y=np.full(len(x_values), 0.04),
            yaxis="y3",
            xaxis="x",
            mode="markers",
            name="alpha not fitted",
            showlegend=False,
            marker={"symbol": "x-thin-open", "size": 12, "color": marker_colours, "line": {"width": 2, "color": marker_colours}},
            customdata=customdata,
            hovertemplate="%{customdata[0]}<br>layer %{customdata[1]}: alpha %{customdata[2]}<extra></extra>",
        )
    )


def _add_interval_band(
    fig: go.Figure, x: np.ndarray, low: np.ndarray, high: np.ndarray, colour: str, group: str, row: int
) -> None:
    finite = np.isfinite(low) & np.isfinite(high)
    if not finite.any():
        return

    # One closed polygon per run of consecutive finite rows, separated by None, so gaps stay gaps.
    polygon_x: list[float | None] = []
    polygon_y: list[float | None] = []
    for segment in _finite_segments(finite):
        polygon_x.extend(list(x[segment]) + list(x[segment][::-1]) + [None])
        polygon_y.extend(list(high[segment]) + list(low[segment][::-1]) + [None])

    fig.add_trace(
        go.Scatter(
            x=polygon_x,
            y=polygon_y,
            fill="toself",
            fillcolor=_rgba(colour, 0.15),
            line={"width": 0},
            mode="lines",
            hoverinfo="skip",
            showlegend=False,
            legendgroup=group,
            name="interval",
        ),
        row=row,
        col=1,
    )


def _finite_segments(finite: np.ndarray) -> list[np.ndarray]:
    segments = []
    current: list[int] = []
    for position, ok in enumerate(finite):
        if ok:
            current.append(position)
        elif current:
            segments.append(np.array(current))
            current = []

    if current:
        segments.append(np.array(current))

    return segments


def shared_ranges(runs: Sequence[RunLike], axis: Axis) -> AxisRanges:
    """Return axis ranges that contain every run's values and intervals, with a 5% margin."""
    x_values, alpha_values, transport_values = [], [], []
    for run in runs:
        layers = run.layers
        x_values.append(axis_values(layers, axis))
        alpha_values.extend([usable_alpha(layers), *_usable_interval(layers, "alpha")])
        transport_values.extend([usable_transport(layers), *_usable_interval(layers, "transport")])

    return AxisRanges(
        x=_padded_range(np.concatenate(x_values)),
        alpha=_padded_range(np.concatenate(alpha_values)),
        transport=_padded_range(np.concatenate(transport_values)),
    )


def _padded_range(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0

    low, high = float(finite.min()), float(finite.max())
    margin = 0.05 * (high - low) if high > low else max(abs(low) * 0.05, 0.05)
    return low - margin, high + margin


def checkpoint_heatmap(
    runs: Sequence[RunLike],
    *,
    metric: Metric = "alpha",
    axis: Axis = "layer",
    reference: RunLike | None = None,
    width_px: int = DEFAULT_WIDTH_PX,
) -> go.Figure:
    """Draw a checkpoint-by-layer heatmap of alpha or transport, or of its difference from a reference.

    Cells without a value (failed fit, last layer, a layer the run lacks, or a run whose layer
    count differs from the reference) are blank, and their hover text gives the reason.

    Args:
        runs: Runs as rows, top to bottom.
        metric: ``alpha`` or ``transport``.
        axis: ``layer`` or ``depth`` columns; runs of different depth share a depth grid with
            blank cells where a run has no layer.
        reference: When given, each cell shows ``run - reference`` on the same layer.
        width_px: Approximate rendered width in CSS pixels, for wrapping the title and footer.
    """
    names = legend_names(runs)
    columns = _heatmap_columns(runs, axis)
    z = np.full((len(runs), columns.size), np.nan)
    hover = np.full((len(runs), columns.size), "no layer at this position", dtype=object)

    status_column = "alpha_status" if metric == "alpha" else "transport_status"
    reference_values = None
    reference_statuses = None
    if reference is not None:
        reference_values = _metric_by_layer(reference, metric)
        reference_layers = reference.layers.sort_values("layer")
        reference_statuses = dict(zip(reference_layers["layer"], reference_layers[status_column], strict=True))

    for row, run in enumerate(runs):
        layers = run.layers.sort_values("layer")
        values = _metric_by_layer(run, metric)
        positions = np.searchsorted(columns, np.round(axis_values(layers, axis), 6))
        statuses = layers[status_column].to_numpy()
        same_layers = reference_values is None or np.array_equal(values.index, reference_values.index)

        for position, (layer, value), status in zip(positions, values.items(), statuses, strict=True):
            if reference_values is None:
                z[row, position] = value
                hover[row, position] = _heatmap_hover(layer, value, status)
            elif not same_layers:
                hover[row, position] = "layer count differs from the reference: no difference"
            else:
                difference = value - reference_values[layer]
                z[row, position] = difference
                hover[row, position] = _difference_hover(layer, difference, status, reference_statuses[layer])

    colour_settings: dict[str, Any] = {"colorscale": "Viridis"}
    title = f"{METRIC_TITLES[metric]} per checkpoint and layer"
    colourbar_title = metric
    if reference is not None:
        limit = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 0.0
        limit = limit if limit > 0.0 else 1.0
        colour_settings = {"colorscale": "RdBu_r", "zmid": 0.0, "zmin": -limit, "zmax": limit}
        title = f"{metric}: difference from reference {escape(run_label(reference))} (run minus reference)"
        colourbar_title = f"Δ {metric}"

    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=columns,
            y=names,
            customdata=hover,
            hovertemplate="%{y}<br>%{customdata}<extra></extra>",
            colorbar={"title": {"text": colourbar_title}},
            xgap=1,
            ygap=1,
            **colour_settings,
        )
    )
    fig.update_xaxes(title_text=axis_title(axis, width_px))
    fig.update_yaxes(title_text="checkpoint", autorange="reversed", type="category")
    fig.update_layout(height=max(320, 90 + 42 * len(runs)))
    _base_layout(fig, title, width_px=width_px)
    _add_footer(fig, runs, width_px=width_px)
    return fig


def _heatmap_columns(runs: Sequence[RunLike], axis: Axis) -> np.ndarray:
    values = np.concatenate([np.round(axis_values(run.layers, axis), 6) for run in runs])
    return np.unique(values)


def _metric_by_layer(run: RunLike, metric: Metric) -> pd.Series:
    layers = run.layers.sort_values("layer")
    values = usable_alpha(layers) if metric == "alpha" else usable_transport(layers)
    return pd.Series(values, index=layers["layer"].to_numpy())


def _heatmap_hover(layer: int, value: float, status: str) -> str:
    if not np.isfinite(value):
        return f"layer {layer}: no value ({escape(status)})"

    return f"layer {layer}: {value:.4f} ({escape(status)})"


def _difference_hover(layer: int, difference: float, status: str, reference_status: str) -> str:
    if np.isfinite(difference):
        return f"layer {layer}: difference {difference:+.4f}"

    return f"layer {layer}: no difference (this run: {escape(status)}, reference: {escape(reference_status)})"


def prompt_heatmap(
    run: RunLike,
    *,
    axis: Axis = "layer",
    max_prompts: int = 100,
    text_chars: int = 80,
    width_px: int = DEFAULT_WIDTH_PX,
) -> go.Figure:
    """Draw a prompt-by-layer heatmap of mean transport for one run.

    Hover shows each prompt's first ``text_chars`` characters, HTML-escaped. The last layer has
    no transport and prompts without used tokens have no value; both are blank.

    Args:
        run: Run with ``prompts`` and ``prompt_layers`` tables.
        axis: ``layer`` or ``depth`` columns.
        max_prompts: Show the first this many prompts, so large sets stay responsive.
        text_chars: Characters of prompt text in the hover.
        width_px: Approximate rendered width in CSS pixels, for wrapping the title and footer.
    """
    layers = run.layers.sort_values("layer")
    prompts = run.prompts.sort_values("prompt_index").head(max_prompts)
    table = run.prompt_layers[run.prompt_layers["prompt_index"].isin(prompts["prompt_index"])]
    grid = table.pivot(index="prompt_index", columns="layer", values="transport_mean")
    grid = grid.reindex(index=prompts["prompt_index"].to_numpy(), columns=layers["layer"].to_numpy())

    transport_ok = (layers["transport_status"] == "ok").to_numpy()
    z = grid.to_numpy(dtype=float).copy()
    z[:, ~transport_ok] = np.nan

    snippets = [_snippet(text, text_chars) for text in prompts["text"]]
    hover = np.array(
        [[f"prompt {index}: {snippet}<br>layer {layer}: {_format_value(value, 4)}" for layer, value in zip(grid.columns, row, strict=True)]
         for index, snippet, row in zip(grid.index, snippets, z, strict=True)],
        dtype=object,
    )

    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=axis_values(layers, axis),
            y=[str(index) for index in grid.index],
            customdata=hover,
            hovertemplate="%{customdata}<extra></extra>",
            colorscale="Viridis",
            colorbar={"title": {"text": "transport"}},
        )
    )
    shown = len(prompts)
    total = len(run.prompts)
    fig.update_xaxes(title_text=axis_title(axis, width_px))
    fig.update_yaxes(title_text="prompt index", autorange="reversed", type="category")
    fig.update_layout(height=max(360, min(1200, 120 + 8 * shown)))
    title = f"Transport per prompt and layer: {escape(run_label(run))} (first {shown} of {total} prompts)"
    _base_layout(fig, title, width_px=width_px)
    _add_footer(fig, [run], width_px=width_px)
    return fig


def _snippet(text: str, limit: int) -> str:
    flat = " ".join(str(text).split())
    if len(flat) > limit:
        flat = flat[: limit - 1] + "…"

    return escape(flat)


def comparison_overlay(
    comparison: Comparison,
    ref: RunLike,
    target: RunLike,
    *,
    axis: Axis = "layer",
    width_px: int = DEFAULT_WIDTH_PX,
) -> go.Figure:
    """Draw reference and target alpha and transport per layer with each run's bootstrap intervals."""
    names = [f"reference: {escape(run_label(ref))}", f"target: {escape(run_label(target))}"]
    return profile_figure(
        [ref, target],
        axis=axis,
        band=comparison.summary.band,
        names=names,
        title="Reference and target per layer",
        width_px=width_px,
    )


def delta_figure(
    comparison: Comparison, ref: RunLike, target: RunLike, *, axis: Axis = "layer", width_px: int = DEFAULT_WIDTH_PX
) -> go.Figure:
    """Draw the per-layer delta (target minus reference) of alpha and transport with paired intervals.

    Args:
        comparison: Result of ``spinal.stats.compare_runs``.
        ref: Reference run (for labels and settings).
        target: Target run.
        axis: ``layer`` or ``depth`` on the x axis.
        width_px: Approximate rendered width in CSS pixels, for wrapping the title and footer.
    """
    table = comparison.table
    x = table["depth"].to_numpy(dtype=float) if axis == "depth" else table["layer"].to_numpy(dtype=float)
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        subplot_titles=("Δ alpha (target minus reference)", "Δ transport (target minus reference)"),
    )

    for row, metric, colour in ((1, "alpha", PALETTE[1]), (2, "transport", PALETTE[0])):
        delta = table[f"delta_{metric}"].to_numpy(dtype=float)
        low = table[f"delta_{metric}_low"].to_numpy(dtype=float)
        high = table[f"delta_{metric}_high"].to_numpy(dtype=float)
        _add_interval_band(fig, x, low, high, colour, f"delta-{metric}", row)
        customdata = np.column_stack(
            [table["layer"].to_numpy(), [_delta_hover(value, lo, hi) for value, lo, hi in zip(delta, low, high, strict=True)]]
        )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=delta,
                mode="lines+markers",
                name=f"Δ {metric}",
                line={"color": colour, "width": 2.5},
                marker={"size": 7},
                customdata=customdata,
                hovertemplate=f"layer %{{customdata[0]}}<br>Δ {metric} %{{customdata[1]}}<extra></extra>",
                connectgaps=False,
            ),
            row=row,
            col=1,
        )
        fig.add_hline(y=0.0, line={"color": "#555555", "width": 1, "dash": "dot"}, row=row, col=1)

    band = comparison.summary.band
    low_x, high_x = (band if axis == "depth" else (band[0] * table["layer"].max(), band[1] * table["layer"].max()))
    for row in (1, 2):
        fig.add_vrect(x0=low_x, x1=high_x, fillcolor=BAND_FILL, line_width=0, layer="below", row=row, col=1)

    fig.update_xaxes(title_text=axis_title(axis, width_px), row=2, col=1)
    fig.update_yaxes(title_text="Δ alpha", row=1, col=1)
    fig.update_yaxes(title_text="Δ transport", row=2, col=1)
    fig.update_layout(height=620, uirevision="delta", showlegend=False)
    title = f"Per-layer change: {escape(run_label(target))} minus {escape(run_label(ref))}"
    _base_layout(fig, title, width_px=width_px)
    interval_note = (
        f"bands: {comparison.summary.level:.0%} paired bootstrap intervals ({comparison.summary.n_replicates} replicates)"
        if comparison.summary.n_replicates
        else "no intervals (bootstrap off or replicates not pairable)"
    )
    _add_footer(fig, [ref, target], f"shaded: terminal band; {interval_note}", width_px)
    return fig


def _delta_hover(value: float, low: float, high: float) -> str:
    if not np.isfinite(value):
        return "no value (fit failed or no transport in a run)"

    if np.isfinite(low) and np.isfinite(high):
        return f"{value:+.4f} [{low:+.4f}, {high:+.4f}]"

    return f"{value:+.4f} (no interval)"
