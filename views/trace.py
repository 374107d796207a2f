"""Trace page: trace a checkpoint from the dashboard in a background job.

Jobs are shared by every session of this server, so a second tab asking for the same trace
attaches to the running job. Progress is polled, so it survives reruns and page switches.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import re
import tempfile
from pathlib import Path

import streamlit as st

from spinal import dashboard as ui
from spinal.errors import SpinalError
from spinal.jobs import REGISTRY, JobSnapshot, TraceRequest, run_engine_trace
from spinal.prompts import BUILTIN_PREFIX, builtin_prompt_sets
from spinal.settings import BootstrapSettings, FitSettings, TokenSettings, TraceSettings

# Importing spinal.demo registers the demo's held-out prompt set as a built-in set.
importlib.import_module("spinal.demo")

POLL_SECONDS = 1.0
_KEY_WATCHED = "trace_watched_jobs"
# A toast to show on the next run: a toast drawn just before st.rerun() is never seen.
_KEY_TOAST = "trace_pending_toast"
UPLOAD_DIR = Path(tempfile.gettempdir()) / "spinal-uploads"

st.title("Trace")
selection = ui.current_selection()
st.caption(
    f"Runs go to the store at {ui.escape_markdown(selection.store_root)}. The same request twice returns the stored run "
    "without loading the model."
)
if selection.store_root.is_file():
    st.warning(
        f"The trace store path {ui.escape_markdown(selection.store_root)} is a file, so no trace can be stored there. "
        "Enter a folder in **Trace store** in the sidebar."
    )


def _save_upload(name: str, payload: bytes) -> str:
    """Write an uploaded prompt file under the temp folder, named by content hash, and return its path."""
    digest = hashlib.sha256(payload).hexdigest()[:16]
    safe_name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).name) or "prompts.txt"
    UPLOAD_DIR.mkdir(parents=True, exist_ok=True)
    path = UPLOAD_DIR / f"{digest}-{safe_name}"
    if not path.exists():
        path.write_bytes(payload)

    return str(path)


def _prompts_name(request: TraceRequest) -> str:
    if request.prompts_name:
        return request.prompts_name

    return request.prompts if request.prompts.startswith(BUILTIN_PREFIX) else Path(request.prompts).name


def _describe(snapshot: JobSnapshot) -> str:
    request = snapshot.request
    label = request.label or Path(request.source).name or request.source
    return f"{label} on {_prompts_name(request)}"


def _error_text(snapshot: JobSnapshot) -> str:
    """Return the job's error with the temporary copy of an uploaded file named as the upload."""
    text = snapshot.error or f"Trace {snapshot.state}."
    request = snapshot.request
    if request.prompts_name:
        uploaded = f"uploaded file {request.prompts_name}"
        text = text.replace(request.prompts, uploaded).replace(Path(request.prompts).name, uploaded)

    return text


def _show_job(snapshot: JobSnapshot) -> None:
    with st.container(border=True):
        st.markdown(f"**{ui.escape_markdown(_describe(snapshot))}** · {snapshot.state}")
        if snapshot.is_active:
            stage = f"{snapshot.stage} {snapshot.done}/{snapshot.total}" if snapshot.stage else "waiting for a free worker"
            st.progress(snapshot.fraction, text=stage)
            if snapshot.attached:
                st.caption(f"{snapshot.attached} more request(s) attached to this job.")
            st.button("Cancel", key=f"cancel_{snapshot.key}", on_click=REGISTRY.cancel, args=(snapshot.key,))
        elif snapshot.state == "done":
            origin = "found in the store" if snapshot.cached else "computed"
            st.success(f"Run {snapshot.run_id} {origin}.")
            if snapshot.run_id not in selection.run_ids:
                st.button("Add to selection", key=f"select_{snapshot.key}", on_click=ui.add_to_selection, args=(snapshot.run_id,))
        elif snapshot.state == "cancelled":
            st.info(ui.escape_markdown(_error_text(snapshot)))
        else:
            st.error(ui.escape_markdown(_error_text(snapshot)))


def _job_panel() -> None:
    snapshots = [snapshot for snapshot in REGISTRY.snapshots() if snapshot.request.store_root == str(selection.store_root)]
    if not snapshots:
        st.caption("No trace jobs yet.")
        return

    if any(not snapshot.is_active for snapshot in snapshots):
        st.button(
            "Clear finished jobs",
            key="trace_clear_finished",
            on_click=REGISTRY.clear_finished,
            args=(str(selection.store_root),),
            help="Remove done, failed and cancelled jobs of this store from the list for every session. "
            "Running and queued jobs stay.",
        )

    for snapshot in reversed(snapshots):
        _show_job(snapshot)

    # A job watched as active that has now finished: rerun the whole app so the sidebar lists its run.
    watched = st.session_state.setdefault(_KEY_WATCHED, set())
    finished = {snapshot.key for snapshot in snapshots if not snapshot.is_active} & watched
    watched.difference_update(finished)
    watched.update(snapshot.key for snapshot in snapshots if snapshot.is_active)
    if finished:
        st.rerun()


pending_toast = st.session_state.pop(_KEY_TOAST, None)
if pending_toast:
    st.toast(pending_toast)

st.subheader("Jobs")
polling = bool(REGISTRY.active())
st.fragment(_job_panel, run_every=POLL_SECONDS if polling else None)()

st.subheader("New trace")
prompt_kind = st.radio("Prompt set", ["Built-in set", "File path", "Upload"], horizontal=True, key="trace_prompt_kind")
defaults = TraceSettings()
with st.form("trace_form"):
    source = st.text_input("Model: local checkpoint directory or hub id", key="trace_source")
    builtin_names = sorted(builtin_prompt_sets())
    builtin = path_text = upload = None
    if prompt_kind == "Built-in set":
        builtin = st.selectbox("Built-in prompt set", builtin_names, key="trace_builtin")
    elif prompt_kind == "File path":
        path_text = st.text_input("Prompt file (.txt, .jsonl, HH-RLHF .jsonl.gz)", key="trace_prompt_path")
    else:
        upload = st.file_uploader("Prompt file", type=["txt", "jsonl", "json", "gz"], key="trace_upload")

    label = st.text_input("Label (optional)", key="trace_label")
    first, second, third, fourth = st.columns(4)
    device = first.selectbox("Device", ["auto", "cpu", "cuda", "mps"], key="trace_device")
    dtype = second.selectbox("Dtype", ["auto", "float32", "bfloat16", "float16"], key="trace_dtype")
    batch_size = third.number_input("Batch size", min_value=1, value=8, key="trace_batch_size")
    max_prompts = fourth.number_input("Max prompts (0 = all)", min_value=0, value=0, key="trace_max_prompts")

    with st.expander("Engine settings"):
        st.markdown("**Alpha fit (tail window of the singular-value spectrum)**")
        fit_columns = st.columns(5)
        center = fit_columns[0].checkbox("Center", value=defaults.fit.center, key="trace_center")
        drop_top = fit_columns[1].number_input("Drop top (fraction of rank)", 0.0, 0.99, defaults.fit.drop_top, key="trace_drop_top")
        fit_until = fit_columns[2].number_input("Fit until (fraction of rank)", 0.01, 1.0, defaults.fit.fit_until, key="trace_fit_until")
        min_points = fit_columns[3].number_input("Min points", 2, 10_000, defaults.fit.min_points, key="trace_min_points")
        rel_floor = fit_columns[4].number_input("Relative floor", 0.0, 0.99, defaults.fit.rel_floor, format="%.1e", key="trace_rel_floor")
        st.markdown("**Tokens**")
        token_columns = st.columns(4)
        positions = token_columns[0].selectbox("Positions", ["skip-first", "all", "last"], key="trace_positions")
        max_tokens = token_columns[1].number_input("Max tokens per prompt", 2, 1_000_000, defaults.tokens.max_tokens, key="trace_max_tokens")
        chat_template = token_columns[2].checkbox("Chat template", value=defaults.tokens.chat_template, key="trace_chat_template")
        add_special = token_columns[3].checkbox("Add special tokens", value=defaults.tokens.add_special_tokens, key="trace_add_special")
        st.markdown("**Bootstrap and precision**")
        boot_columns = st.columns(5)
        replicates = boot_columns[0].number_input("Replicates (0 = off)", 0, 100_000, defaults.bootstrap.replicates, key="trace_replicates")
        groups = boot_columns[1].number_input("Prompt groups", 2, 10_000, defaults.bootstrap.groups, key="trace_groups")
        level = boot_columns[2].number_input("Level", 0.5, 0.999, defaults.bootstrap.level, key="trace_level")
        seed = boot_columns[3].number_input("Seed", 0, 2**31 - 1, defaults.bootstrap.seed, key="trace_seed")
        gram_dtype = boot_columns[4].selectbox("Gram dtype", ["float64", "float32"], key="trace_gram_dtype")

    with st.expander("Loading options"):
        revision = st.text_input("Hub revision (optional)", key="trace_revision")
        trust_remote_code = st.checkbox("Trust remote code (runs code shipped with the checkpoint)", key="trace_trust")
        allow_pickle = st.checkbox("Allow pickled .bin weights", key="trace_pickle")

    submitted = st.form_submit_button("Start trace", type="primary")

if submitted:
    prompts_name = None
    try:
        if not source.strip():
            raise SpinalError("model is missing: enter a local checkpoint directory or a hub id.")

        if prompt_kind == "Built-in set":
            if not builtin:
                raise SpinalError("no built-in prompt set is registered: pick a file path or upload a file.")
            prompts = f"{BUILTIN_PREFIX}{builtin}"
        elif prompt_kind == "File path":
            if not (path_text or "").strip():
                raise SpinalError("prompt file path is missing: enter a path or pick another prompt source.")
            prompts = str(Path(path_text.strip()).expanduser())
        else:
            if upload is None:
                raise SpinalError("no prompt file uploaded: choose a file or pick another prompt source.")
            prompts = _save_upload(upload.name, upload.getvalue())
            prompts_name = upload.name

        settings = TraceSettings(
            fit=FitSettings(center=center, drop_top=drop_top, fit_until=fit_until, min_points=int(min_points), rel_floor=rel_floor),
            tokens=TokenSettings(positions=positions, max_tokens=int(max_tokens), chat_template=chat_template, add_special_tokens=add_special),
            bootstrap=BootstrapSettings(replicates=int(replicates), groups=int(groups), level=level, seed=int(seed)),
            gram_dtype=gram_dtype,
        )
        settings.validate()
        request = TraceRequest(
            source=source.strip(),
            prompts=prompts,
            store_root=str(selection.store_root),
            settings=settings.to_dict(),
            device=device,
            dtype=dtype,
            batch_size=int(batch_size),
            max_prompts=int(max_prompts) or None,
            revision=revision.strip() or None,
            trust_remote_code=trust_remote_code,
            allow_pickle=allow_pickle,
            label=label.strip() or None,
            prompts_name=prompts_name,
        )
    except SpinalError as error:
        ui.show_error(error)
    else:
        snapshot, attached = REGISTRY.submit(request, functools.partial(run_engine_trace, models=ui.model_cache()))
        st.session_state.setdefault(_KEY_WATCHED, set()).add(snapshot.key)
        if attached and snapshot.is_active:
            st.session_state[_KEY_TOAST] = "The same trace is already running: attached to the running job."
        elif attached:
            st.session_state[_KEY_TOAST] = "The same trace already finished: its run is shown under Jobs."
        st.rerun()

st.subheader("Loaded models")
cache = ui.model_cache()
resident = cache.resident()
if not resident:
    st.caption("No model is loaded. Models load only when a trace needs one, and at most two stay resident.")
for index, load_args in enumerate(resident):
    name_column, button_column = st.columns([4, 1])
    name_column.markdown(f"{ui.escape_markdown(load_args['source'])} ({ui.escape_markdown(load_args['device'])}, {ui.escape_markdown(load_args['dtype'])})")
    button_column.button("Unload", key=f"unload_{index}", on_click=cache.unload, args=(load_args,))
if resident:
    st.button("Unload all models", key="unload_all", on_click=cache.unload)
