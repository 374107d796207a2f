"""On-disk store of depth traces: one folder per run, written atomically.

Root folder, first match wins:

1. ``TraceStore(root=...)``;
2. the ``SPINAL_STORE`` environment variable;
3. ``$XDG_CACHE_HOME/spinal/store`` when ``XDG_CACHE_HOME`` is an absolute path;
4. ``~/.cache/spinal/store``.

Layout under the root::

    runs/<run_id>/manifest.json       run metadata (see below), written last
    runs/<run_id>/<table>.parquet     one file per table in TABLE_SCHEMAS
    aliases/<request_key>.json        {"run_id": ...}: request key to run
    tmp/<uuid>/                       staging folders of writes in progress
    locks/<key>.lock                  file locks, one per trace key
    fingerprints.json                 file digest cache of spinal.fingerprint

``run_id`` is the first 16 hex digits of the run's 64-hex ``key`` (the engine's content hash
of model, prompts and settings). A run is complete when its folder under ``runs/`` has
``manifest.json`` and every table file. A write stages all files in ``tmp/<uuid>/``, writes
the manifest last with fsync, and renames the folder into ``runs/``. A rename is atomic on
one file system, so a crashed write leaves only a staging folder, which is never listed.

The engine serialises work on one key with::

    with store.lock(key):
        run = store.find(key) or store.write_run(key, manifest, tables)

The manifest is a JSON object with schema_version, run_id, key, label, created (ISO 8601,
UTC), layer_convention, model, prompts, settings, versions, timings, series and warnings.
``write_run`` fills run_id, key, schema_version and created when they are missing and adds
``tables`` (rows per table). This module imports pandas and pyarrow but never torch.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

import filelock
import pandas as pd
from pandas.api import types as pd_types

from spinal.errors import StoreError
from spinal.settings import SCHEMA_VERSION

logger = logging.getLogger(__name__)

TABLE_SCHEMAS: dict[str, dict[str, str]] = {
    "layers": {
        "layer": "int64",
        "depth": "float64",
        "n_tokens": "int64",
        "rank": "int64",
        "alpha": "float64",
        "alpha_status": "str",
        "alpha_warning": "str",
        "fit_k_min": "int64",
        "fit_k_max": "int64",
        "fit_points": "int64",
        "fit_r2": "float64",
        "alpha_ci_low": "float64",
        "alpha_ci_high": "float64",
        "transport": "float64",
        "transport_std": "float64",
        "transport_ci_low": "float64",
        "transport_ci_high": "float64",
        "transport_status": "str",
    },
    "prompts": {
        "prompt_index": "int64",
        "text": "str",
        "n_tokens": "int64",
        "n_used": "int64",
        "truncated": "bool",
        "group": "int64",
    },
    "prompt_layers": {
        "prompt_index": "int64",
        "layer": "int64",
        "n_used": "int64",
        "transport_sum": "float64",
        "transport_mean": "float64",
    },
    "replicates": {"replicate": "int64", "layer": "int64", "alpha": "float64", "transport": "float64"},
    "spectra": {"layer": "int64", "k": "int64", "sigma": "float64"},
}
"""Required columns and their types for each table of schema version 1. Extra columns are kept."""

TABLE_NAMES = tuple(TABLE_SCHEMAS)
MANIFEST_NAME = "manifest.json"
STORE_ENV = "SPINAL_STORE"
RUNS_HINT = "run `spinal runs` to list runs"

_KEY_PATTERN = re.compile(r"[0-9a-f]{64}")
_RUN_ID_LENGTH = 16


def default_store_root() -> Path:
    """Return the store root from ``SPINAL_STORE``, ``XDG_CACHE_HOME`` or ``~/.cache``."""
    configured = os.environ.get(STORE_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()

    cache_home = os.environ.get("XDG_CACHE_HOME", "").strip()
    if cache_home and os.path.isabs(cache_home):
        return Path(cache_home) / "spinal" / "store"

    return Path.home() / ".cache" / "spinal" / "store"


# ---------------------------------------------------------------------------------------------
# Tables


def validate_tables(tables: Mapping[str, Any]) -> None:
    """Check that every table of TABLE_SCHEMAS is present with its required columns and types.

    Column types are checked loosely: an int64 column takes any integer dtype without missing
    values, a float64 column any real dtype, a str column strings only, a bool column booleans.
    Empty tables are checked for columns only.

    Raises:
        StoreError: Naming every missing or unknown table, missing column and wrong type.
    """
    if not isinstance(tables, Mapping):
        raise StoreError(f"tables must be a dict of table name to DataFrame, got {type(tables).__name__}.")

    problems = []
    missing_tables = [name for name in TABLE_NAMES if name not in tables]
    if missing_tables:
        problems.append(f"missing tables: {', '.join(missing_tables)}")

    unknown_tables = sorted(str(name) for name in tables if name not in TABLE_SCHEMAS)
    if unknown_tables:
        problems.append(f"unknown tables: {', '.join(unknown_tables)}")

    for name in TABLE_NAMES:
        if name in tables:
            problems.extend(_table_problems(name, tables[name]))

    if problems:
        raise StoreError(
            f"invalid run tables ({'; '.join(problems)}): produce every table and column of schema "
            f"version {SCHEMA_VERSION}."
        )


def _table_problems(name: str, frame: Any) -> list[str]:
    if not isinstance(frame, pd.DataFrame):
        return [f"table '{name}' is a {type(frame).__name__}, not a DataFrame"]

    schema = TABLE_SCHEMAS[name]
    missing = [column for column in schema if column not in frame.columns]
    problems = []
    if missing:
        problems.append(f"table '{name}' is missing columns {', '.join(missing)}")

    if frame.empty:
        return problems

    for column, kind in schema.items():
        if column not in frame.columns:
            continue

        series = frame[column]
        if not _matches_kind(series, kind):
            problems.append(f"table '{name}' column '{column}' has dtype {series.dtype}, expected {kind}")
        elif kind != "float64" and series.isna().any():
            problems.append(
                f"table '{name}' column '{column}' has missing values, expected {kind} in every row"
            )

    return problems


def _matches_kind(series: pd.Series, kind: str) -> bool:
    """Check the dtype family. ``_table_problems`` checks missing values."""
    if kind == "int64":
        return pd_types.is_integer_dtype(series.dtype)

    if kind == "float64":
        return pd_types.is_float_dtype(series.dtype) or pd_types.is_integer_dtype(series.dtype)

    if kind == "bool":
        return pd_types.is_bool_dtype(series.dtype)

    if pd_types.is_object_dtype(series.dtype):
        return all(isinstance(value, str) or value is None for value in series)

    return pd_types.is_string_dtype(series.dtype)


def empty_table(name: str) -> pd.DataFrame:
    """Return an empty table with the schema's columns and dtypes (for example, no replicates)."""
    schema = TABLE_SCHEMAS[name]
    return pd.DataFrame({column: pd.Series(dtype=_pandas_dtype(kind)) for column, kind in schema.items()})


def _pandas_dtype(kind: str) -> str:
    return "object" if kind == "str" else kind


def _coerce_table(name: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Cast the schema columns to their exact dtypes so every run has the same parquet schema."""
    coerced = frame.reset_index(drop=True).copy()
    for column, kind in TABLE_SCHEMAS[name].items():
        if kind == "str":
            coerced[column] = (
                coerced[column].astype("str") if len(coerced) else coerced[column].astype("object")
            )
        else:
            coerced[column] = coerced[column].astype(kind)

    return coerced


# ---------------------------------------------------------------------------------------------
# Runs


def run_label(manifest: Mapping[str, Any]) -> str:
    """Return the manifest's label, or a default from the model name, series step and run id."""
    label = manifest.get("label")
    if isinstance(label, str) and label.strip():
        return label.strip()

    run_id = str(manifest.get("run_id", ""))[:8]
    series = manifest.get("series")
    if isinstance(series, Mapping) and series.get("name"):
        return f"{series['name']} step {series.get('step')} ({run_id})"

    model = manifest.get("model")
    source = str(model.get("source", "")) if isinstance(model, Mapping) else ""
    name = Path(source).name or source or "model"
    return f"{name} ({run_id})"


@dataclass(frozen=True)
class RunInfo:
    """Summary of one complete run, built from its manifest alone (no parquet is read).

    Attributes:
        run_id: Folder name under ``runs/``: the first 16 hex digits of ``key``.
        label: Display name (see ``run_label``).
        model_source: Model path or hub id as given to the trace.
        created: ISO 8601 UTC time the run was written.
        n_layers: Number of blocks L, so tables have rows for layers 0..L.
        prompt_sha256: Content hash of the prompt set.
        series: ``{name, step, epoch}`` for a training series, else None.
        key: Full 64-hex trace key.
        model_type: Hugging Face ``config.model_type``.
        prompt_source: Prompt file path or ``builtin:NAME``.
        n_prompts: Number of prompts traced.
        path: Run folder.
        manifest: The whole parsed manifest.
    """

    run_id: str
    label: str
    model_source: str
    created: str
    n_layers: int | None
    prompt_sha256: str | None
    series: dict[str, Any] | None
    key: str = ""
    model_type: str | None = None
    prompt_source: str | None = None
    n_prompts: int | None = None
    path: Path | None = None
    manifest: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], path: Path) -> RunInfo:
        """Build the summary from a parsed manifest. Missing fields become None."""
        model = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
        prompts = manifest.get("prompts") if isinstance(manifest.get("prompts"), dict) else {}
        series = manifest.get("series") if isinstance(manifest.get("series"), dict) else None
        return cls(
            run_id=str(manifest.get("run_id", path.name)),
            label=run_label(manifest),
            model_source=str(model.get("source", "")),
            created=str(manifest.get("created", "")),
            n_layers=model.get("n_layers"),
            prompt_sha256=prompts.get("sha256"),
            series=series,
            key=str(manifest.get("key", "")),
            model_type=model.get("model_type"),
            prompt_source=prompts.get("source"),
            n_prompts=prompts.get("n_prompts"),
            path=path,
            manifest=manifest,
        )


class Run:
    """A complete stored run. Tables are read from parquet on first access and kept.

    Attributes:
        run_id: Folder name under ``runs/``.
        path: Run folder.
        manifest: Parsed ``manifest.json``.
    """

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = Path(path)
        self.run_id = self.path.name
        self.manifest = manifest

    def __repr__(self) -> str:
        return f"Run(run_id={self.run_id!r}, label={self.label!r}, path={str(self.path)!r})"

    @property
    def key(self) -> str:
        """Full 64-hex trace key."""
        return str(self.manifest.get("key", ""))

    @property
    def label(self) -> str:
        """Display name: the manifest label, or a default from model, series and run id."""
        return run_label(self.manifest)

    @property
    def created(self) -> str:
        """ISO 8601 UTC time the run was written."""
        return str(self.manifest.get("created", ""))

    @property
    def info(self) -> RunInfo:
        """Summary of this run, as ``TraceStore.list_runs`` returns it."""
        return RunInfo.from_manifest(self.manifest, self.path)

    def table(self, name: str) -> pd.DataFrame:
        """Return the table ``name`` (one of TABLE_NAMES), reading it on first access."""
        if name not in TABLE_SCHEMAS:
            raise StoreError(f"table {name!r} is unknown: use one of {', '.join(TABLE_NAMES)}.")

        return getattr(self, name)

    @cached_property
    def layers(self) -> pd.DataFrame:
        """Per-layer metrics: one row per layer 0..L."""
        return self._read_table("layers")

    @cached_property
    def prompts(self) -> pd.DataFrame:
        """Per-prompt token counts and the first 2000 characters of each text."""
        return self._read_table("prompts")

    @cached_property
    def prompt_layers(self) -> pd.DataFrame:
        """Per-prompt, per-layer transport sums and means."""
        return self._read_table("prompt_layers")

    @cached_property
    def replicates(self) -> pd.DataFrame:
        """Bootstrap replicates of alpha and transport per layer."""
        return self._read_table("replicates")

    @cached_property
    def spectra(self) -> pd.DataFrame:
        """Singular values per layer, by 1-based rank k."""
        return self._read_table("spectra")

    def _read_table(self, name: str) -> pd.DataFrame:
        path = self.path / f"{name}.parquet"
        try:
            return pd.read_parquet(path)
        except (OSError, ValueError) as error:
            raise StoreError(
                f"table {name} of run {self.run_id} could not be read from {path} ({error}): "
                f"delete the run and trace again, or {RUNS_HINT}."
            ) from error


# ---------------------------------------------------------------------------------------------
# Store


class TraceStore:
    """Folder of stored runs with atomic writes, per-key locks and request aliases.

    Args:
        root: Store folder, or ``None`` for ``default_store_root()``. Nothing is created until
            the first write.
    """

    def __init__(self, root: str | Path | None = None) -> None:
        base = Path(root).expanduser() if root is not None else default_store_root()
        if base.exists() and not base.is_dir():
            raise StoreError(f"store path {base} is not a directory: pass a directory to --store or SPINAL_STORE.")
        self.root = base.absolute()

    def __repr__(self) -> str:
        return f"TraceStore(root={str(self.root)!r})"

    @property
    def runs_dir(self) -> Path:
        """Folder of complete runs."""
        return self.root / "runs"

    @property
    def staging_dir(self) -> Path:
        """Folder of staging folders for writes in progress."""
        return self.root / "tmp"

    @property
    def locks_dir(self) -> Path:
        """Folder of per-key lock files."""
        return self.root / "locks"

    @property
    def aliases_dir(self) -> Path:
        """Folder of request-key aliases."""
        return self.root / "aliases"

    @property
    def fingerprint_cache_path(self) -> Path:
        """File digest cache to pass to ``spinal.fingerprint.fingerprint_directory``."""
        return self.root / "fingerprints.json"

    # Reading -----------------------------------------------------------------------------------

    def list_runs(self) -> list[RunInfo]:
        """Return the complete runs, oldest first, reading manifests only.

        Folders without a manifest or a table, with an unreadable manifest, with another
        schema version or with a name that is not a run id are skipped.
        """
        if not self.runs_dir.is_dir():
            return []

        infos = []
        for run_dir in self.runs_dir.iterdir():
            manifest = self._complete_manifest(run_dir)
            if manifest is not None:
                infos.append(RunInfo.from_manifest(manifest, run_dir))

        return sorted(infos, key=lambda info: (_created_sort_key(info.created), _series_step(info), info.run_id))

    def get(self, run_id: str) -> Run:
        """Return the complete run ``run_id`` or the only complete run whose id starts with it.

        Raises:
            StoreError: When no complete run matches, the prefix matches several runs, or the
                run has another schema version.
        """
        prefix = str(run_id).strip().lower()
        if not re.fullmatch(r"[0-9a-f]{1,16}", prefix):
            raise StoreError(f"run {run_id!r} not found in {self.runs_dir}: run ids are hex, {RUNS_HINT}.")

        exact = self.runs_dir / prefix
        if len(prefix) == _RUN_ID_LENGTH and exact.is_dir():
            return self._open(exact, run_id)

        matches = []
        if self.runs_dir.is_dir():
            matches = sorted(
                entry
                for entry in self.runs_dir.iterdir()
                if entry.name.startswith(prefix) and self._is_complete(entry)
            )

        if not matches:
            damaged = [(name, reason) for name, reason in self.damaged_runs() if name.startswith(prefix)]
            if len(damaged) == 1:
                name, reason = damaged[0]
                raise StoreError(
                    f"run {name} is damaged ({reason}): delete {self.runs_dir / name} and trace it again."
                )
            raise StoreError(f"run {run_id!r} not found in {self.runs_dir}: {RUNS_HINT}.")

        if len(matches) > 1:
            names = ", ".join(entry.name for entry in matches)
            raise StoreError(
                f"run id prefix {run_id!r} matches several runs ({names}): give more characters."
            )

        return self._open(matches[0], run_id)

    def damaged_runs(self) -> list[tuple[str, str]]:
        """Return ``(run_id, reason)`` for run folders that ``list_runs`` skips as incomplete.

        Runs are staged elsewhere and renamed into place whole, so an incomplete folder under
        ``runs/`` was damaged after it was written (a deleted table, an edited manifest).
        """
        if not self.runs_dir.is_dir():
            return []

        damaged = []
        for run_dir in sorted(self.runs_dir.iterdir()):
            if not re.fullmatch(r"[0-9a-f]{16}", run_dir.name) or self._is_complete(run_dir):
                continue

            damaged.append((run_dir.name, self._damage_reason(run_dir)))

        return damaged

    def _damage_reason(self, run_dir: Path) -> str:
        names = (MANIFEST_NAME, *(f"{name}.parquet" for name in TABLE_NAMES))
        missing = [name for name in names if not (run_dir / name).is_file()]
        if missing:
            return "missing " + ", ".join(missing)

        manifest = self._read_manifest(run_dir)
        if manifest is None:
            return "manifest.json is unreadable"

        if manifest.get("schema_version") != SCHEMA_VERSION:
            return f"schema version {manifest.get('schema_version')}, expected {SCHEMA_VERSION}"

        return "manifest run_id does not match the folder name"

    def find(self, key: str) -> Run | None:
        """Return the complete run stored under ``key``, or None."""
        _check_hex_key(key, "key")
        run_dir = self.runs_dir / key[:_RUN_ID_LENGTH]
        manifest = self._complete_manifest(run_dir)
        if manifest is None or manifest.get("key") != key:
            return None

        return Run(run_dir, manifest)

    def _open(self, run_dir: Path, requested: str) -> Run:
        manifest = self._read_manifest(run_dir)
        if manifest is None or not self._tables_present(run_dir):
            raise StoreError(
                f"run {run_dir.name} is damaged ({self._damage_reason(run_dir)}): delete {run_dir} "
                "and trace it again."
            )

        version = manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"run {run_dir.name} has schema version {version}, this SPINAL reads {SCHEMA_VERSION}: "
                "trace it again with this version."
            )

        return Run(run_dir, manifest)

    def _complete_manifest(self, run_dir: Path) -> dict[str, Any] | None:
        """Return the manifest of a complete run of this schema version, else None."""
        if not re.fullmatch(r"[0-9a-f]{16}", run_dir.name) or not self._tables_present(run_dir):
            return None

        manifest = self._read_manifest(run_dir)
        if manifest is None:
            return None

        if manifest.get("run_id") != run_dir.name or manifest.get("schema_version") != SCHEMA_VERSION:
            logger.debug("skipping %s: run_id or schema_version does not match", run_dir)
            return None

        return manifest

    def _is_complete(self, run_dir: Path) -> bool:
        return self._complete_manifest(run_dir) is not None

    @staticmethod
    def _tables_present(run_dir: Path) -> bool:
        names = (MANIFEST_NAME, *(f"{name}.parquet" for name in TABLE_NAMES))
        return all((run_dir / name).is_file() for name in names)

    @staticmethod
    def _read_manifest(run_dir: Path) -> dict[str, Any] | None:
        try:
            manifest = json.loads((run_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            logger.debug("skipping %s: manifest unreadable (%s)", run_dir, error)
            return None

        return manifest if isinstance(manifest, dict) else None

    # Writing -----------------------------------------------------------------------------------

    def lock(self, key: str, timeout: float = -1) -> filelock.FileLock:
        """Return the inter-process lock of ``key``, to use as a context manager.

        Args:
            key: 64-hex trace key.
            timeout: Seconds to wait for the lock, or -1 to wait forever. When it runs out,
                entering the context raises ``filelock.Timeout``.
        """
        _check_hex_key(key, "key")
        self._make_dirs(self.locks_dir)
        return filelock.FileLock(str(self.locks_dir / f"{key}.lock"), timeout=timeout)

    def write_run(self, key: str, manifest: Mapping[str, Any], tables: Mapping[str, pd.DataFrame]) -> Run:
        """Store a run atomically and return it, or return the existing run if ``key`` is stored.

        Tables are validated with ``validate_tables`` and cast to the schema dtypes. The
        caller's manifest is copied, never changed.

        Raises:
            StoreError: For an invalid key, tables or manifest, a manifest whose run_id or key
                disagrees with ``key``, a run id taken by another key, or an unwritable root.
        """
        _check_hex_key(key, "key")
        validate_tables(tables)
        run_id = key[:_RUN_ID_LENGTH]
        content = _manifest_for_write(key, run_id, manifest, tables)

        existing = self.find(key)
        if existing is not None:
            logger.info("run %s is already stored, keeping the existing copy", run_id)
            return existing

        self._make_dirs(self.runs_dir, self.staging_dir)
        staging = self.staging_dir / uuid.uuid4().hex
        target = self.runs_dir / run_id
        try:
            staging.mkdir()
            for name in TABLE_NAMES:
                self._write_table(staging / f"{name}.parquet", _coerce_table(name, tables[name]))

            # The manifest goes last: a folder with a manifest has every table.
            _write_durable(staging / MANIFEST_NAME, content.encode("utf-8"))
            _fsync_dir(staging)
            return self._publish(staging, target, key, json.loads(content))
        except OSError as error:
            raise StoreError(
                f"run {run_id} could not be written under {self.root} ({error}): "
                f"check free space and permissions, or set {STORE_ENV} to a writable folder."
            ) from error
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    @staticmethod
    def _write_table(path: Path, frame: pd.DataFrame) -> None:
        with open(path, "wb") as handle:
            frame.to_parquet(handle, engine="pyarrow", index=False)
            handle.flush()
            os.fsync(handle.fileno())

    def _publish(self, staging: Path, target: Path, key: str, manifest: dict[str, Any]) -> Run:
        """Rename the staging folder to ``target``, or return the run another writer published."""
        for attempt in range(2):
            try:
                os.rename(staging, target)
            except OSError as error:
                if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
            else:
                _fsync_dir(self.runs_dir)
                logger.info("stored run %s at %s", target.name, target)
                return Run(target, manifest)

            stored = self._complete_manifest(target)
            if stored is not None and stored.get("key") == key:
                logger.info("run %s was stored by another writer, keeping that copy", target.name)
                return Run(target, stored)

            if stored is not None:
                raise StoreError(
                    f"run id {target.name} is taken by key {stored.get('key')}, not {key}: "
                    f"delete run {target.name} to store this one."
                )

            if attempt == 0:
                # An incomplete folder under runs/ is damage from outside the store: set it aside.
                logger.warning("replacing incomplete run folder %s", target)
                self._discard(target)

        raise StoreError(f"run folder {target} could not be replaced: delete it and trace again.")

    def alias(self, request_key: str) -> str | None:
        """Return the run id stored for ``request_key``, or None when unset or the run is gone."""
        _check_hex_key(request_key, "request key")
        path = self.aliases_dir / f"{request_key}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            logger.warning("ignoring unreadable alias %s (%s)", path, error)
            return None

        run_id = data.get("run_id") if isinstance(data, dict) else None
        if not isinstance(run_id, str) or not self._is_complete(self.runs_dir / run_id):
            return None

        return run_id

    def set_alias(self, request_key: str, run_id: str) -> None:
        """Point ``request_key`` at ``run_id``, replacing the alias file atomically."""
        _check_hex_key(request_key, "request key")
        if not re.fullmatch(r"[0-9a-f]{16}", str(run_id)):
            raise StoreError(f"run id {run_id!r} is invalid: use the 16 hex digits of a stored run.")

        self._make_dirs(self.aliases_dir)
        payload = json.dumps({"run_id": run_id}).encode("utf-8")
        _replace_durable(self.aliases_dir / f"{request_key}.json", payload)

    def delete(self, run_id: str) -> None:
        """Delete the run folder ``run_id`` (exact id) and the aliases that point at it.

        Raises:
            StoreError: When no folder ``runs/<run_id>`` exists.
        """
        target = self.runs_dir / str(run_id)
        if not re.fullmatch(r"[0-9a-f]{16}", str(run_id)) or not target.is_dir():
            raise StoreError(f"run {run_id!r} not found in {self.runs_dir}: {RUNS_HINT}.")

        self._discard(target)
        if self.aliases_dir.is_dir():
            for alias_path in self.aliases_dir.glob("*.json"):
                if _alias_target(alias_path) == run_id:
                    alias_path.unlink(missing_ok=True)

        logger.info("deleted run %s", run_id)

    def clean_staging(self, older_than_s: float = 3600) -> int:
        """Remove staging leftovers of crashed writes older than ``older_than_s`` seconds.

        Returns:
            Number of entries removed.
        """
        if not self.staging_dir.is_dir():
            return 0

        cutoff = time.time() - older_than_s
        removed = 0
        for entry in self.staging_dir.iterdir():
            try:
                if entry.lstat().st_mtime > cutoff:
                    continue
            except FileNotFoundError:
                continue

            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1

        if removed:
            logger.info("removed %d staging leftovers from %s", removed, self.staging_dir)

        return removed

    def _discard(self, folder: Path) -> None:
        """Move a folder out of ``runs/`` in one rename, then delete it."""
        self._make_dirs(self.staging_dir)
        trash = self.staging_dir / f"{uuid.uuid4().hex}.deleted"
        os.rename(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def _make_dirs(self, *folders: Path) -> None:
        for folder in folders:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise StoreError(
                    f"store folder {folder} could not be created ({error}): "
                    f"set {STORE_ENV} to a writable folder."
                ) from error


# ---------------------------------------------------------------------------------------------
# Helpers


def _check_hex_key(key: Any, field_name: str) -> None:
    if not isinstance(key, str) or not _KEY_PATTERN.fullmatch(key):
        raise StoreError(f"{field_name} {key!r} is invalid: use a 64-digit lowercase hex SHA-256 digest.")


def _manifest_for_write(
    key: str, run_id: str, manifest: Mapping[str, Any], tables: Mapping[str, pd.DataFrame]
) -> str:
    """Return the manifest JSON text with run_id, key, schema_version, created and tables filled in."""
    if not isinstance(manifest, Mapping):
        raise StoreError(f"manifest of run {run_id} must be a dict, got {type(manifest).__name__}.")

    content = dict(manifest)
    for field_name, expected in (("run_id", run_id), ("key", key)):
        if content.setdefault(field_name, expected) != expected:
            raise StoreError(
                f"manifest {field_name} {content[field_name]!r} does not match {expected!r}: "
                "the run id is the first 16 digits of the key."
            )

    content.setdefault("schema_version", SCHEMA_VERSION)
    content.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    content["tables"] = {name: len(tables[name]) for name in TABLE_NAMES}

    try:
        return json.dumps(content, indent=2, sort_keys=True, allow_nan=False, default=_json_default) + "\n"
    except (TypeError, ValueError) as error:
        raise StoreError(
            f"manifest of run {run_id} is not valid JSON ({error}): use plain numbers, strings, "
            "lists and dicts, with None in place of NaN."
        ) from error


def _json_default(value: Any) -> Any:
    """Convert numpy scalars and arrays and paths, which ``json`` does not know."""
    if hasattr(value, "tolist"):
        return value.tolist()

    if isinstance(value, Path):
        return str(value)

    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _write_durable(path: Path, payload: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


def _replace_durable(path: Path, payload: bytes) -> None:
    """Replace ``path`` atomically: temporary file in the same folder, fsync, os.replace."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise

    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries to disk so a rename survives a power loss (POSIX only)."""
    if os.name != "posix":
        return

    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _alias_target(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None

    return data.get("run_id") if isinstance(data, dict) else None


def _series_step(info: RunInfo) -> int:
    """Return the training step of a series run, so runs created in the same instant keep step order."""
    step = (info.series or {}).get("step")
    return step if isinstance(step, int) else -1


def _created_sort_key(created: str) -> float:
    """Return a POSIX timestamp for sorting, with unparsable times first."""
    try:
        moment = datetime.fromisoformat(created)
    except ValueError:
        return float("-inf")

    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)

    return moment.timestamp()
