"""Trajectories page: each checkpoint as a path through (depth, alpha, transport), and its 2D projections."""

from __future__ import annotations

import streamlit as st

from spinal import dashboard as ui
from spinal import figures

MAX_RUNS_WITH_INTERVALS = 6

st.title("Trajectories")
selection = ui.current_selection()
runs = ui.require_runs(selection, minimum=1, purpose="trajectories")

controls = st.columns([3, 1])
camera = controls[0].segmented_control(
    "Camera", list(figures.CAMERA_PRESETS), default="oblique", key="trajectory_camera",
    help="Preset views; rotating by hand is kept across reruns until a preset is picked.",
) or "oblique"
show_ci = controls[1].toggle(
    "Bootstrap intervals", value=len(runs) <= MAX_RUNS_WITH_INTERVALS, key="trajectory_intervals",
    help=f"Shaded per-layer intervals; off by default above {MAX_RUNS_WITH_INTERVALS} checkpoints to keep the plot readable.",
)

left, right = st.columns([3, 2])
with left:
    ui.plot(
        figures.trajectory_3d(runs, axis=selection.axis, band=selection.band, camera=camera, width_px=ui.column_width(3 / 5)),
        key="trajectory_3d",
    )
with right:
    ui.plot(
        figures.profile_figure(
            runs, axis=selection.axis, band=selection.band, show_ci=show_ci, width_px=ui.column_width(2 / 5)
        ),
        key="trajectory_profiles",
    )

ui.show_settings(runs)
ui.show_flagged(runs)
