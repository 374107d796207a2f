"""Training page: how one training series' depth trace changes with the training step.

A series is the set of stored runs whose manifests carry the same series name and comparable
settings (see ``spinal.series``). The page shows every run of the picked series, whatever the
sidebar selects: step x layer heatmaps, terminal-band values against step with bootstrap
intervals, and the first step where a band value departs from its running baseline.
"""

from __future__ import annotations

import streamlit as st

from spinal import dashboard as ui
from spinal import series as series_analysis
from spinal import series_figures

WIDGET_SERIES = "training_series"
WIDGET_K = "training_k"

RULE_HELP = (
    "For each metric, the running baseline at a step is the mean of the terminal-band values of all "
    "earlier steps (it needs at least 2 earlier steps). A step departs when |value - baseline| > "
    "k x max(s, sd of the earlier values), where s is the bootstrap standard deviation of the band mean "
    "at that step (left out when the run has no intervals). The marker is the first departing step. "
    "It is a reading aid that points at a step worth a closer look, not a statistical test."
)

st.title("Training")
selection = ui.current_selection()
found = series_analysis.find_series(selection.infos.values())

if not found:
    if selection.store_root.is_file():
        ui.show_empty_store(selection)
        st.stop()

    option = ui.store_option(selection.store_root).replace("`", "'")
    state = "has no training series" if selection.store_root.exists() else "does not exist (check the path for a typo)"
    st.info(
        f"The trace store at {ui.escape_markdown(selection.store_root)} {state}. A series is a set of "
        "runs of one training job, one per saved step. To make one:\n\n"
        f"- build the offline demo (a base model and its DPO checkpoints, traced): `spinal demo{option}`,\n"
        "- attach `spinal.callbacks.SpinalCallback` to a transformers `Trainer`, so every checkpoint save is traced,\n"
        f"- or trace a training output folder of `checkpoint-N` folders: `spinal trace OUTPUT_DIR --prompts PROMPTS.txt{option}`."
    )
    st.stop()

by_key = {item.key: item for item in found}
if st.session_state.get(WIDGET_SERIES) not in by_key:
    remembered = ui.selected_series()
    fallback = series_analysis.default_series(found, selection.run_ids)
    st.session_state[WIDGET_SERIES] = remembered if remembered in by_key else fallback.key

series_column, k_column = st.columns([3, 1])
chosen_key = series_column.selectbox(
    "Training series",
    list(by_key),
    key=WIDGET_SERIES,
    format_func=lambda key: by_key[key].title,
    help="Runs with the same series name, layer count, prompt set and settings, ordered by step. "
    "Default: the series containing the most sidebar checkpoints, else the newest.",
)
k = k_column.number_input(
    "Departure threshold k",
    min_value=0.5,
    max_value=20.0,
    value=series_analysis.DEFAULT_K,
    step=0.5,
    key=WIDGET_K,
    help=f"Multiple of the scale that marks a departure (default {series_analysis.DEFAULT_K:g}). {RULE_HELP}",
)
ui.set_selected_series(chosen_key)
chosen = by_key[chosen_key]

for warning in chosen.warnings:
    st.warning(ui.escape_markdown(warning))

if len(chosen.run_ids) < 2:
    st.info(
        f"Series {ui.escape_markdown(chosen.name)} has one run (step {chosen.steps[0]}). A series needs at least two "
        "steps to show change over training: trace more checkpoints of the same training job with the same "
        "prompt set and settings."
    )
    st.stop()

step_text = ", ".join(str(step) for step in chosen.steps) if len(chosen.steps) <= 12 else f"{chosen.steps[0]} to {chosen.steps[-1]}"
st.caption(
    f"{len(chosen.run_ids)} runs, steps {step_text}. Every run of the series is shown, whatever the sidebar "
    "selects; the sidebar's depth axis and terminal band apply."
)

runs = ui.open_runs(selection, chosen.run_ids)
table = series_analysis.band_values(runs, chosen.steps, selection.band, epochs=chosen.epochs)
onsets = series_analysis.series_onsets(table, k=float(k))

columns = st.columns(2)
for column, (metric, onset) in zip(columns, onsets.items(), strict=True):
    headline = {"departs": f"step {onset.step}", "no_departure": "no departure", "too_short": "too few steps"}[onset.status]
    if onset.n_values == 0:
        headline = "no band value"
    column.metric(f"First departure of band {metric}", headline, help=RULE_HELP)
    column.caption(ui.escape_markdown(onset.message))

with st.expander("How the departure marker is found"):
    st.markdown(ui.escape_markdown(RULE_HELP))

for metric in series_analysis.METRICS:
    rows = table[table["metric"] == metric]
    if rows["value"].isna().all():
        st.info(
            f"No layer of the terminal band has a usable {metric} value in any run of this series. Move the band "
            "start lower in the sidebar (the last layer never has transport)."
        )
        continue

    missing = rows[rows["value"].notna() & rows["low"].isna()]
    if not missing.empty:
        details = "; ".join(f"step {int(row.step)}: {row.interval_note}" for row in missing.itertuples(index=False))
        st.info(ui.escape_markdown(f"No bootstrap interval for band {metric} at {len(missing)} step(s) ({details}); hollow markers."))

ui.plot(
    series_figures.series_band_figure(
        table, onsets, band=selection.band, runs=runs, name=chosen.name, width_px=ui.column_width(1)
    ),
    key="training_band",
)

left, right = st.columns(2)
for column, metric in ((left, "alpha"), (right, "transport")):
    with column:
        fig = series_figures.series_heatmap(
            runs, chosen.steps, metric=metric, axis=selection.axis, epochs=chosen.epochs, name=chosen.name,
            width_px=ui.column_width(1 / 2),
        )
        ui.plot(fig, key=f"training_heatmap_{metric}")

with st.expander("Band values per step"):
    st.dataframe(table, hide_index=True, width="stretch")

ui.show_settings(runs)
ui.show_flagged(runs)
