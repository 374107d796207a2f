"""Runs page: every run in the store, and what to do when there is none."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from spinal import dashboard as ui
from spinal.errors import SpinalError
from spinal.store import TraceStore

st.title("Runs")
selection = ui.current_selection()

if not selection.infos:
    ui.show_empty_store(selection)
    st.stop()

rows = []
for info in selection.infos.values():
    model = info.manifest.get("model") or {}
    series = info.series or {}
    rows.append(
        {
            "selected": info.run_id in selection.run_ids,
            "label": info.label,
            "run id": info.run_id,
            "model": info.model_source,
            "type": info.model_type,
            "layers": info.n_layers,
            "dtype": model.get("dtype"),
            "prompts": info.n_prompts,
            "prompt set": (info.prompt_sha256 or "")[:12],
            "series step": series.get("step"),
            "created": info.created,
        }
    )

st.caption(f"{len(rows)} run(s) in {ui.escape_markdown(selection.store_root)}. Pick runs for the other pages in the sidebar.")
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")

with st.expander("Delete a run"):
    doomed = st.selectbox(
        "Run to delete", list(selection.infos), format_func=lambda run_id: f"{selection.infos[run_id].label} · {run_id}"
    )
    confirmed = st.checkbox("I understand the run's tables are removed from disk.")
    if st.button("Delete run", disabled=not confirmed, type="secondary"):
        try:
            TraceStore(selection.store_root).delete(doomed)
        except SpinalError as error:
            ui.show_error(error)
        else:
            ui.clear_run_caches()
            st.rerun()
