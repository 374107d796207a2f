"""Streamlit glue shared by ``app.py`` and the pages: sidebar selection, cached reads, messages.

The selection (store, runs, reference, target, depth axis, terminal band, and the training
series of the Training page) is kept in session state and mirrored into ``st.query_params`` on
every run, so a copied URL reopens the same view.
Run lists come from manifests only, and tables are read once per run and cached, because runs
are immutable. Nothing here imports torch.
"""

from __future__ import annotations

import logging
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from spinal.errors import SpinalError
from spinal.figures import Axis, run_label, settings_text
from spinal.stats import DEFAULT_BAND
from spinal.store import RunInfo, TraceStore, default_store_root

logger = logging.getLogger(__name__)

PARAM_STORE = "store"
PARAM_RUNS = "runs"
PARAM_REFERENCE = "ref"
PARAM_TARGET = "target"
PARAM_AXIS = "axis"
PARAM_BAND = "band"
PARAM_SERIES = "series"

_KEY_STORE = "selection_store"
_KEY_RUNS = "selection_runs"
_KEY_REFERENCE = "selection_reference"
_KEY_TARGET = "selection_target"
_KEY_AXIS = "selection_axis"
_KEY_BAND = "selection_band"
# Not a widget key: Streamlit drops a widget's state on pages that do not draw it, and the
# series must survive visits to other pages.
_KEY_SERIES = "selection_series"
_KEY_SEEDED = "selection_seeded_from_url"
# Run ids named by the URL, until the first sidebar run resolves them against the store.
_KEY_URL_IDS = "selection_url_run_ids"
# (store root, run ids) of URL run ids that the store did not contain.
_KEY_MISSING = "selection_missing_run_ids"
_KEY_SELECTION = "selection"

DEFAULT_SELECTED = 4
"""Runs selected when the URL names none: the first few, so large stores open quickly."""

AXIS_LABELS: dict[str, str] = {"layer": "Block index", "depth": "Relative depth (0..1)"}

MAIN_WIDTH_PX = 1150
"""Estimated width of the main area in CSS pixels: a 1600 px window minus the sidebar and padding.

Plotly does not wrap titles and annotations, so figures wrap their text to a width estimated
from this. NOTE: on narrower windows long footers can still be clipped.
"""
PLOTLY_CONFIG: dict[str, Any] = {"displaylogo": False, "toImageButtonOptions": {"scale": 2}}


@dataclass(frozen=True)
class Selection:
    """Sidebar selection shared by every page.

    Attributes:
        store_root: Root folder of the trace store.
        run_ids: Selected runs in display order.
        reference: Run id of the reference (unaligned) checkpoint, or None.
        target: Run id of the target (aligned) checkpoint, or None.
        axis: ``layer`` for block index or ``depth`` for relative depth.
        band: Terminal band as relative depth.
        infos: Every complete run in the store, by run id.
    """

    store_root: Path
    run_ids: tuple[str, ...]
    reference: str | None
    target: str | None
    axis: Axis
    band: tuple[float, float]
    infos: dict[str, RunInfo]


class CachedRun:
    """A stored run whose tables come from the process-wide cache (same attributes as ``Run``).

    Each table is fetched from ``load_table`` once per instance, because every ``st.cache_data``
    hit unpickles a fresh copy and the figures read ``layers`` many times.
    """

    def __init__(self, root: Path, info: RunInfo) -> None:
        self.root = root
        self.run_id = info.run_id
        self.manifest = info.manifest
        self.info = info

    @property
    def label(self) -> str:
        """Display name of the run (raw text, not escaped)."""
        return run_label(self)

    @cached_property
    def layers(self) -> pd.DataFrame:
        """Per-layer table."""
        return load_table(str(self.root), self.run_id, "layers")

    @cached_property
    def prompts(self) -> pd.DataFrame:
        """Per-prompt table."""
        return load_table(str(self.root), self.run_id, "prompts")

    @cached_property
    def prompt_layers(self) -> pd.DataFrame:
        """Per-prompt, per-layer transport table."""
        return load_table(str(self.root), self.run_id, "prompt_layers")

    @cached_property
    def replicates(self) -> pd.DataFrame:
        """Bootstrap replicates."""
        return load_table(str(self.root), self.run_id, "replicates")

    @cached_property
    def spectra(self) -> pd.DataFrame:
        """Singular values per layer."""
        return load_table(str(self.root), self.run_id, "spectra")


def _runs_dir_stamp(root: Path) -> int:
    runs_dir = root / "runs"
    try:
        return runs_dir.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


@st.cache_data(show_spinner=False, max_entries=32)
def _list_runs(root: str, stamp: int) -> list[RunInfo]:
    # ``stamp`` is the mtime of runs/: adding or deleting a run folder changes it.
    return TraceStore(root).list_runs()


def list_runs(root: Path) -> list[RunInfo]:
    """Return the complete runs of the store at ``root``, read from manifests only."""
    return _list_runs(str(root), _runs_dir_stamp(root))


@st.cache_data(show_spinner=False, max_entries=2000)
def load_table(root: str, run_id: str, name: str) -> pd.DataFrame:
    """Read one table of one run; cached per (store, run, table) because runs never change."""
    return TraceStore(root).get(run_id).table(name)


def clear_run_caches() -> None:
    """Forget cached run lists and tables (after deleting a run)."""
    _list_runs.clear()
    load_table.clear()


# ---------------------------------------------------------------------------------------------
# Sidebar and query parameters


def _seed_from_url() -> None:
    """Copy the URL's query parameters into widget state, once per session."""
    if st.session_state.get(_KEY_SEEDED):
        return

    params = st.query_params
    st.session_state[_KEY_STORE] = params.get(PARAM_STORE) or str(default_store_root())
    url_ids: list[str] = []
    if PARAM_RUNS in params:
        # An empty value is an explicit empty selection; a missing one selects the first runs.
        st.session_state[_KEY_RUNS] = [run_id for run_id in params[PARAM_RUNS].split(",") if run_id]
        url_ids.extend(st.session_state[_KEY_RUNS])
    if params.get(PARAM_REFERENCE):
        st.session_state[_KEY_REFERENCE] = params[PARAM_REFERENCE]
        url_ids.append(params[PARAM_REFERENCE])
    if params.get(PARAM_TARGET):
        st.session_state[_KEY_TARGET] = params[PARAM_TARGET]
        url_ids.append(params[PARAM_TARGET])
    st.session_state[_KEY_URL_IDS] = list(dict.fromkeys(url_ids))
    if params.get(PARAM_AXIS) in AXIS_LABELS:
        st.session_state[_KEY_AXIS] = params[PARAM_AXIS]
    band = _parse_band(params.get(PARAM_BAND))
    if band is not None:
        st.session_state[_KEY_BAND] = band
    if params.get(PARAM_SERIES):
        st.session_state[_KEY_SERIES] = params[PARAM_SERIES]

    st.session_state[_KEY_SEEDED] = True


def _parse_band(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None

    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        return None

    if not 0.0 <= low < high <= 1.0:
        return None

    return round(low, 2), round(high, 2)


def _resolve_ids(requested: Sequence[str], infos: dict[str, RunInfo]) -> list[str]:
    """Map full ids or unique prefixes to stored run ids, dropping unknown ones."""
    resolved = []
    for text in requested:
        matches = [run_id for run_id in infos if run_id.startswith(text)]
        if len(matches) == 1 and matches[0] not in resolved:
            resolved.append(matches[0])

    return resolved


def _format_run(infos: dict[str, RunInfo]) -> Callable[[str], str]:
    def format_run(run_id: str) -> str:
        info = infos.get(run_id)
        return f"{info.label} · {run_id[:8]}" if info else run_id

    return format_run


def render_sidebar() -> Selection:
    """Draw the shared sidebar, mirror it into the URL and store the selection for the pages."""
    _seed_from_url()
    sidebar = st.sidebar
    sidebar.header("Selection")

    store_text = sidebar.text_input(
        "Trace store",
        key=_KEY_STORE,
        help="Folder of stored runs. Default: $SPINAL_STORE, else ~/.cache/spinal/store.",
    )
    store_root = Path(store_text.strip() or str(default_store_root())).expanduser()
    infos = {info.run_id: info for info in _safe_list_runs(store_root)}
    run_ids = list(infos)
    format_run = _format_run(infos)
    _warn_missing_url_runs(sidebar, store_root, infos)

    if _KEY_RUNS in st.session_state:
        st.session_state[_KEY_RUNS] = _resolve_ids(st.session_state[_KEY_RUNS], infos)
    else:
        st.session_state[_KEY_RUNS] = run_ids[:DEFAULT_SELECTED]

    selected = sidebar.multiselect(
        "Checkpoints",
        run_ids,
        key=_KEY_RUNS,
        format_func=format_run,
        help="Runs shown on every page, in this order.",
        placeholder="Pick runs" if run_ids else "No runs in this store",
    )

    reference = _role_select(sidebar, "Reference (unaligned)", _KEY_REFERENCE, selected, selected[:1], format_run)
    target = _role_select(
        sidebar, "Target (aligned)", _KEY_TARGET, selected, _target_candidates(selected, reference, infos), format_run
    )

    if _KEY_AXIS not in st.session_state:
        st.session_state[_KEY_AXIS] = "layer"
    axis = sidebar.radio(
        "Depth axis",
        list(AXIS_LABELS),
        key=_KEY_AXIS,
        format_func=AXIS_LABELS.get,
        help="Relative depth (layer / L) lines up models of different depth.",
    )

    if _KEY_BAND not in st.session_state:
        st.session_state[_KEY_BAND] = (round(DEFAULT_BAND[0], 2), DEFAULT_BAND[1])
    band = sidebar.slider(
        "Terminal band (relative depth)",
        min_value=0.0,
        max_value=1.0,
        step=0.01,
        key=_KEY_BAND,
        help="Layers whose depth falls in this range form the terminal band. Default: the last third.",
    )

    selection = Selection(
        store_root=store_root,
        run_ids=tuple(selected),
        reference=reference,
        target=target,
        axis=axis,
        band=(float(band[0]), float(band[1])),
        infos=infos,
    )
    _write_url(selection)
    st.session_state[_KEY_SELECTION] = selection
    return selection


def _warn_missing_url_runs(sidebar: Any, store_root: Path, infos: dict[str, RunInfo]) -> None:
    """Warn about run ids in the URL that the store lacks, instead of silently dropping them.

    The ids are checked once per session, on the first run after the URL was read. The warning
    stays while the store path is unchanged and the runs are still missing.
    """
    url_ids = st.session_state.pop(_KEY_URL_IDS, None)
    if url_ids is not None:
        missing = [run_id for run_id in url_ids if not _resolve_ids([run_id], infos)]
        st.session_state[_KEY_MISSING] = (str(store_root), missing)

    missing_root, missing = st.session_state.get(_KEY_MISSING, ("", []))
    still_missing = [run_id for run_id in missing if not _resolve_ids([run_id], infos)]
    if missing_root != str(store_root) or not still_missing:
        return

    sidebar.warning(
        f"The link names {len(still_missing)} run(s) that the store at {escape_markdown(store_root)} does not contain: "
        f"{escape_markdown(', '.join(still_missing))}. They may have been deleted, or the link was made for another "
        "store: enter that store's folder in **Trace store**."
    )


def _safe_list_runs(root: Path) -> list[RunInfo]:
    try:
        return list_runs(root)
    except (SpinalError, OSError) as error:
        st.sidebar.error(f"The store at {root} could not be read: {error}")
        return []


def _target_candidates(selected: Sequence[str], reference: str | None, infos: dict[str, RunInfo]) -> list[str]:
    """Order default targets: other runs with the reference's layer count first."""
    others = [run_id for run_id in selected if run_id != reference]
    layer_count = infos[reference].n_layers if reference in infos else None
    return sorted(others, key=lambda run_id: infos[run_id].n_layers != layer_count)


def _role_select(
    sidebar: Any,
    label: str,
    key: str,
    selected: Sequence[str],
    defaults: Sequence[str],
    format_run: Callable[[str], str],
) -> str | None:
    if len(selected) < 2:
        st.session_state.pop(key, None)
        sidebar.selectbox(label, ["select two checkpoints first"], disabled=True, key=f"{key}_disabled")
        return None

    if st.session_state.get(key) not in selected:
        st.session_state[key] = defaults[0] if defaults else selected[0]

    return sidebar.selectbox(label, list(selected), key=key, format_func=format_run)


def _write_url(selection: Selection) -> None:
    params: dict[str, str] = {}
    if selection.store_root != default_store_root():
        params[PARAM_STORE] = str(selection.store_root)
    params[PARAM_RUNS] = ",".join(selection.run_ids)
    if selection.reference:
        params[PARAM_REFERENCE] = selection.reference
    if selection.target:
        params[PARAM_TARGET] = selection.target
    params[PARAM_AXIS] = selection.axis
    params[PARAM_BAND] = f"{selection.band[0]:.2f},{selection.band[1]:.2f}"
    if st.session_state.get(_KEY_SERIES):
        params[PARAM_SERIES] = st.session_state[_KEY_SERIES]

    if dict(st.query_params) != params:
        st.query_params.from_dict(params)


def current_selection() -> Selection:
    """Return the selection that ``render_sidebar`` stored in this run."""
    selection = st.session_state.get(_KEY_SELECTION)
    if selection is None:
        selection = render_sidebar()

    return selection


def selected_series() -> str | None:
    """Return the key of the training series picked on the Training page or named in the URL."""
    return st.session_state.get(_KEY_SERIES)


def set_selected_series(series_key: str | None) -> None:
    """Remember the Training page's series for this session and write it to the URL at once."""
    if series_key:
        st.session_state[_KEY_SERIES] = series_key
        if st.query_params.get(PARAM_SERIES) != series_key:
            st.query_params[PARAM_SERIES] = series_key
        return

    st.session_state.pop(_KEY_SERIES, None)
    if PARAM_SERIES in st.query_params:
        del st.query_params[PARAM_SERIES]


def open_runs(selection: Selection, run_ids: Sequence[str] | None = None) -> list[CachedRun]:
    """Return cached-table runs for ``run_ids`` (default: the selected runs)."""
    wanted = selection.run_ids if run_ids is None else run_ids
    return [CachedRun(selection.store_root, selection.infos[run_id]) for run_id in wanted if run_id in selection.infos]


# ---------------------------------------------------------------------------------------------
# Messages

_MARKDOWN_SPECIAL = set("\\`*_[]<>$~|")
ZERO_WIDTH_SPACE = "\u200b"
# Text that GitHub-flavoured Markdown turns into a link without any markup (autolink literals):
# a scheme before "://", "www" before a dot, and the "@" of an e-mail address.
_AUTOLINK = re.compile(r"(?i)(https?|ftp)(?=://)|\bwww(?=\.)|@(?=\w)")


def _code(text: object) -> str:
    # Text for inside a Markdown code span, where nothing but a backtick is special.
    return str(text).replace("`", "'")


def escape_markdown(text: object) -> str:
    """Escape ``text`` for Streamlit Markdown so labels, paths and messages show literally.

    Streamlit renders messages, captions and ``st.markdown`` as Markdown, where an underscore
    pair in a path turns italic and ``[x](url)`` becomes a link. Line breaks become spaces. Bare
    URLs and e-mail addresses would become links too (GFM autolinks), and a backslash escape does
    not stop that, so a zero-width space goes after ``http``, ``https``, ``ftp``, ``www`` and ``@``.
    """
    flat = " ".join(str(text).splitlines())
    escaped = "".join(f"\\{character}" if character in _MARKDOWN_SPECIAL else character for character in flat)
    return _AUTOLINK.sub(lambda match: match.group(0) + ZERO_WIDTH_SPACE, escaped)



def store_option(root: Path) -> str:
    """Return `` --store PATH`` for CLI commands, or ``""`` when ``root`` is the default store.

    Without it, a command copied from the dashboard would write to the default store.
    """
    if root == default_store_root():
        return ""

    return f" --store {shlex.quote(str(root))}"


def show_empty_store(selection: Selection) -> None:
    """Explain what to do when the store has no runs, is missing, or is a file."""
    root = selection.store_root
    if root.is_file():
        st.warning(
            f"The trace store path {escape_markdown(root)} is a file, not a folder. Enter the store's folder in "
            "**Trace store** in the sidebar."
        )
        return

    if root.exists():
        status = f"The trace store at {escape_markdown(root)} has no runs yet. To add one:"
    else:
        status = (
            f"The trace store at {escape_markdown(root)} does not exist. Check **Trace store** in the sidebar for a "
            "typo, or create the store by adding a run:"
        )

    option = _code(store_option(root))
    st.info(
        f"{status}\n\n"
        f"- trace a checkpoint from a shell: `spinal trace MODEL_DIR --prompts PROMPTS.txt{option}`,\n"
        "- or open the **Trace** page and trace from here,\n"
        f"- or build the offline demo (a small model before and after DPO, traced): `spinal demo{option}`."
    )


def require_runs(selection: Selection, minimum: int = 1, purpose: str = "this page") -> list[CachedRun]:
    """Return the selected runs, or explain what is missing and stop the page."""
    if not selection.infos:
        show_empty_store(selection)
        st.stop()

    runs = open_runs(selection)
    if len(runs) < minimum:
        st.info(f"Select at least {minimum} checkpoint{'s' if minimum > 1 else ''} in the sidebar for {purpose}.")
        st.stop()

    return runs


def show_settings(runs: Sequence[Any]) -> None:
    """Show the settings line of each distinct setting among ``runs`` under a figure."""
    texts: dict[str, list[str]] = {}
    for run in runs:
        texts.setdefault(settings_text(run.manifest), []).append(run_label(run))

    if len(texts) == 1:
        st.caption(f"Settings: {escape_markdown(next(iter(texts)))}")
        return

    for text, labels in texts.items():
        st.caption(f"Settings of {escape_markdown(', '.join(labels))}: {escape_markdown(text)}")


def show_flagged(runs: Sequence[Any]) -> None:
    """List layers whose alpha fit did not succeed, with status and warning."""
    rows = []
    for run in runs:
        layers = run.layers
        failed = layers[layers["alpha_status"] != "ok"]
        for row in failed.itertuples(index=False):
            rows.append(
                {"checkpoint": run_label(run), "layer": int(row.layer), "status": row.alpha_status, "warning": row.alpha_warning}
            )

    if rows:
        with st.expander(f"{len(rows)} layer(s) without an alpha fit (shown as gaps)"):
            st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def column_width(fraction: float) -> int:
    """Return the estimated width in CSS pixels of a column taking ``fraction`` of the main area."""
    return int(MAIN_WIDTH_PX * fraction) - 16


def plot(fig: go.Figure, key: str) -> None:
    """Draw a Plotly figure with the figure's own styling (as exported)."""
    st.plotly_chart(fig, key=key, theme=None, config=PLOTLY_CONFIG, width="stretch")


def show_error(error: SpinalError) -> None:
    """Show a SPINAL error as one readable message."""
    st.error(escape_markdown(error))


def add_to_selection(run_id: str) -> None:
    """Append ``run_id`` to the selected runs; call it from a widget callback."""
    selected = list(st.session_state.get(_KEY_RUNS, []))
    if run_id not in selected:
        selected.append(run_id)

    st.session_state[_KEY_RUNS] = selected
    _list_runs.clear()


@st.cache_resource(show_spinner=False)
def model_cache() -> Any:
    """Return the process-wide cache of loaded models (at most two resident)."""
    from spinal.jobs import ModelCache

    return ModelCache(max_models=2)
