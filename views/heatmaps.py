"""Heatmaps page: checkpoint x layer for alpha and transport, their difference, and prompt x layer transport."""

from __future__ import annotations

import streamlit as st

from spinal import dashboard as ui
from spinal import figures

st.title("Heatmaps")
selection = ui.current_selection()
runs = ui.require_runs(selection, minimum=1, purpose="heatmaps")
by_id = {run.run_id: run for run in runs}

metric = st.segmented_control("Metric", ["alpha", "transport"], default="alpha", key="heatmap_metric") or "alpha"
ui.plot(
    figures.checkpoint_heatmap(runs, metric=metric, axis=selection.axis, width_px=ui.column_width(1)), key="heatmap_checkpoints"
)

if selection.reference in by_id:
    reference = by_id[selection.reference]
    ui.plot(
        figures.checkpoint_heatmap(runs, metric=metric, axis=selection.axis, reference=reference, width_px=ui.column_width(1)),
        key="heatmap_difference",
    )
else:
    st.info("Select two checkpoints and a reference in the sidebar to see differences from the reference.")

st.subheader("Transport per prompt")
prompt_run_id = st.selectbox(
    "Checkpoint", list(by_id), format_func=lambda run_id: by_id[run_id].label, key="heatmap_prompt_run"
)
prompt_run = by_id[prompt_run_id]
n_prompts = len(prompt_run.prompts)
shown = st.slider("Prompts shown", 1, max(1, n_prompts), min(100, max(1, n_prompts)), key="heatmap_prompt_count") if n_prompts > 1 else n_prompts
ui.plot(
    figures.prompt_heatmap(prompt_run, axis=selection.axis, max_prompts=shown, width_px=ui.column_width(1)),
    key="heatmap_prompts",
)

ui.show_settings(runs)
ui.show_flagged(runs)
