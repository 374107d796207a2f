"""Runs page: every run in the store with its settings and trace warnings, and what to do when there is none."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from spinal import dashboard as ui
from spinal.errors import SpinalError
from spinal.figures import settings_text
from spinal.store import TraceStore

st.title("Runs")
selection = ui.current_selection()

if not selection.infos:
    ui.show_empty_store(selection)
    st.stop()

rows = []
warning_rows = []
for info in selection.infos.values():
    model = info.manifest.get("model") or {}
    series = info.series or {}
    warnings = [str(text) for text in info.manifest.get("warnings") or []]
    warning_rows.extend({"label": info.label, "run id": info.run_id, "warning": text} for text in warnings)
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
            "warnings": len(warnings),
            "settings": settings_text(info.manifest),
        }
    )

st.caption(f"{len(rows)} run(s) in {ui.escape_markdown(selection.store_root)}. Pick runs for the other pages in the sidebar.")
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")

if warning_rows:
    warned_runs = len({row["run id"] for row in warning_rows})
    with st.expander(f"{len(warning_rows)} trace warning(s) in {warned_runs} run(s)", expanded=True):
        st.dataframe(pd.DataFrame(warning_rows), hide_index=True, width="stretch")

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
