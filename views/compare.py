"""Compare page: reference versus target per layer, the per-layer delta, and the terminal-band verdict."""

from __future__ import annotations

import math

import streamlit as st

from spinal import dashboard as ui
from spinal import figures
from spinal.stats import ComparisonError, compare_runs

VERDICT_TITLES = {
    "supported": "Signature supported",
    "contradicted": "Signature contradicted",
    "inconclusive": "Signature not established",
    "no_intervals": "No intervals: signature not assessed",
}

st.title("Compare")
selection = ui.current_selection()
ui.require_runs(selection, minimum=2, purpose="a comparison")
if selection.reference == selection.target:
    st.info("Pick different checkpoints as reference and target in the sidebar.")
    st.stop()

reference, target = ui.open_runs(selection, [selection.reference, selection.target])
try:
    comparison = compare_runs(reference, target, band=selection.band)
except ComparisonError as error:
    ui.show_error(error)
    st.stop()

for warning in comparison.warnings:
    st.warning(ui.escape_markdown(warning))

summary = comparison.summary
st.subheader(VERDICT_TITLES[summary.verdict])
st.markdown(ui.escape_markdown(summary.sentence))


def _share(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.0%}"


def _relative(delta: float, base: float) -> str | None:
    if not (math.isfinite(delta) and math.isfinite(base)) or base == 0:
        return None

    return f"{delta / abs(base):+.1%} of the reference"


def _estimate(value: float, digits: int) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:+.{digits}f}"


def _interval(low: float, high: float, digits: int) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return "no interval"

    return f"{summary.level:.0%} interval [{low:+.{digits}f}, {high:+.{digits}f}]"


columns = st.columns(4)
columns[0].metric(
    "Δ alpha in band",
    _estimate(summary.band_delta_alpha, 3),
    help=f"Mean of target minus reference over band layers {list(summary.band_layers_alpha)}.",
)
columns[0].caption(
    " · ".join(filter(None, [_interval(summary.band_delta_alpha_low, summary.band_delta_alpha_high, 3), _relative(summary.band_delta_alpha, summary.band_alpha_ref)]))
)
columns[1].metric(
    "Δ transport in band",
    _estimate(summary.band_delta_transport, 4),
    help=f"Mean of target minus reference over band layers {list(summary.band_layers_transport)}.",
)
columns[1].caption(
    " · ".join(
        filter(None, [_interval(summary.band_delta_transport_low, summary.band_delta_transport_high, 4), _relative(summary.band_delta_transport, summary.band_transport_ref)])
    )
)
columns[2].metric("Share of |Δ alpha| in band", _share(summary.band_share_alpha), help="Share of the summed absolute alpha change over all layers.")
columns[3].metric("Share of |Δ transport| in band", _share(summary.band_share_transport), help="Share of the summed absolute transport change over all layers.")
st.caption(
    f"Target minus reference; terminal band: relative depth {summary.band[0]:.2f} to {summary.band[1]:.2f}; "
    f"{summary.n_replicates} paired bootstrap replicates; verdict: {VERDICT_TITLES[summary.verdict]}."
)

left, right = st.columns(2)
with left:
    ui.plot(
        figures.comparison_overlay(comparison, reference, target, axis=selection.axis, width_px=ui.column_width(1 / 2)),
        key="compare_overlay",
    )
with right:
    ui.plot(
        figures.delta_figure(comparison, reference, target, axis=selection.axis, width_px=ui.column_width(1 / 2)),
        key="compare_delta",
    )

ui.show_settings([reference, target])
ui.show_flagged([reference, target])
with st.expander("Per-layer table"):
    st.dataframe(comparison.table, hide_index=True, width="stretch")
