"""Side-by-side page: two to four checkpoints in columns with identical axes."""

from __future__ import annotations

import streamlit as st

from spinal import dashboard as ui
from spinal import figures

MAX_COLUMNS = 4

st.title("Side by side")
selection = ui.current_selection()
runs = ui.require_runs(selection, minimum=2, purpose="a side-by-side view")
if len(runs) > MAX_COLUMNS:
    st.caption(f"Showing the first {MAX_COLUMNS} of {len(runs)} selected checkpoints.")
    runs = runs[:MAX_COLUMNS]

ranges = figures.shared_ranges(runs, selection.axis)
names = figures.legend_names(runs)
for index, (column, run, name) in enumerate(zip(st.columns(len(runs)), runs, names, strict=True)):
    with column:
        fig = figures.profile_figure(
            [run],
            axis=selection.axis,
            band=selection.band,
            ranges=ranges,
            names=[name],
            colours=[figures.colour_for(index)],
            title=name,
            width_px=ui.column_width(1 / len(runs)),
        )
        ui.plot(fig, key=f"side_by_side_{index}")

ui.show_settings(runs)
ui.show_flagged(runs)
