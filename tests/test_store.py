"""Trace store: atomic writes, concurrent writers, crash leftovers, listing and lookup."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from pathlib import Path

import filelock
import numpy as np
import pandas as pd
import pytest

from spinal.errors import StoreError
from spinal.settings import SCHEMA_VERSION
from spinal.store import (
    TABLE_NAMES,
    TABLE_SCHEMAS,
    RunInfo,
    TraceStore,
    default_store_root,
    empty_table,
    validate_tables,
)


def key_for(seed: object) -> str:
    return hashlib.sha256(str(seed).encode()).hexdigest()


def make_tables(n_layers: int = 3, n_prompts: int = 4, value: float = 1.0) -> dict[str, pd.DataFrame]:
    layers = np.arange(n_layers + 1)
    layer_rows = len(layers)
    layer_table = pd.DataFrame(
        {
            "layer": layers,
            "depth": layers / n_layers,
            "n_tokens": np.full(layer_rows, 40),
            "rank": np.full(layer_rows, 16),
            "alpha": np.linspace(value, value + 1, layer_rows),
            "alpha_status": ["ok"] * layer_rows,
            "alpha_warning": [""] * layer_rows,
            "fit_k_min": np.full(layer_rows, 2),
            "fit_k_max": np.full(layer_rows, 8),
            "fit_points": np.full(layer_rows, 7),
            "fit_r2": np.full(layer_rows, 0.99),
            "alpha_ci_low": np.full(layer_rows, value - 0.1),
            "alpha_ci_high": np.full(layer_rows, value + 0.1),
            "transport": [*np.full(n_layers, 0.5), np.nan],
            "transport_std": [*np.full(n_layers, 0.1), np.nan],
            "transport_ci_low": [*np.full(n_layers, 0.4), np.nan],
            "transport_ci_high": [*np.full(n_layers, 0.6), np.nan],
            "transport_status": ["ok"] * n_layers + ["last_layer"],
        }
    )
    prompt_table = pd.DataFrame(
        {
            "prompt_index": np.arange(n_prompts),
            "text": [f"prompt {index}" for index in range(n_prompts)],
            "n_tokens": np.full(n_prompts, 10),
            "n_used": np.full(n_prompts, 9),
            "truncated": [False] * n_prompts,
            "group": np.arange(n_prompts) % 2,
        }
    )
    prompt_layer_table = pd.DataFrame(
        {
            "prompt_index": np.repeat(np.arange(n_prompts), n_layers),
            "layer": np.tile(np.arange(n_layers), n_prompts),
            "n_used": np.full(n_prompts * n_layers, 9),
            "transport_sum": np.full(n_prompts * n_layers, 4.5),
            "transport_mean": np.full(n_prompts * n_layers, 0.5),
        }
    )
    replicate_table = pd.DataFrame(
        {
            "replicate": np.repeat(np.arange(5), layer_rows),
            "layer": np.tile(layers, 5),
            "alpha": np.full(5 * layer_rows, value),
            "transport": np.full(5 * layer_rows, 0.5),
        }
    )
    spectra_table = pd.DataFrame(
        {
            "layer": np.repeat(layers, 8),
            "k": np.tile(np.arange(1, 9), layer_rows),
            "sigma": np.tile(1.0 / np.arange(1, 9), layer_rows),
        }
    )
    return {
        "layers": layer_table,
        "prompts": prompt_table,
        "prompt_layers": prompt_layer_table,
        "replicates": replicate_table,
        "spectra": spectra_table,
    }


def make_manifest(label: str | None = None, created: str | None = None, source: str = "/models/tiny") -> dict:
    manifest = {
        "label": label,
        "layer_convention": "row 0 = embeddings, rows 1..L = block outputs",
        "model": {"source": source, "model_type": "llama", "n_layers": 3, "hidden_size": 16},
        "prompts": {
            "source": "builtin:pydoc-topics",
            "format": "builtin",
            "sha256": key_for("p"),
            "n_prompts": 4,
        },
        "settings": {"gram_dtype": "float64"},
        "series": None,
        "warnings": [],
    }
    if created is not None:
        manifest["created"] = created
    return manifest


@pytest.fixture
def store(tmp_path) -> TraceStore:
    return TraceStore(tmp_path / "store")


def staging_entries(store: TraceStore) -> list[Path]:
    return list(store.staging_dir.iterdir()) if store.staging_dir.is_dir() else []


# Workers run in spawned processes, so they live at module level and take plain arguments.


def locked_writer(root: str, key: str, barrier, results) -> None:
    writer_store = TraceStore(root)
    barrier.wait()
    with writer_store.lock(key):
        run = writer_store.find(key)
        computed = run is None
        if computed:
            time.sleep(0.5)
            run = writer_store.write_run(key, make_manifest(label=f"pid {os.getpid()}"), make_tables())
    results.put((run.run_id, computed))


def unlocked_writer(root: str, key: str, barrier, results) -> None:
    writer_store = TraceStore(root)
    tables = make_tables()
    barrier.wait()
    run = writer_store.write_run(key, make_manifest(label=f"pid {os.getpid()}"), tables)
    results.put((run.run_id, run.manifest["label"]))


def dying_writer(root: str, key: str) -> None:
    """Write a run but exit the process abruptly after two tables, as a kill would."""
    writer_store = TraceStore(root)
    written = []

    def write_then_die(path, frame):
        if len(written) == 2:
            os._exit(3)
        written.append(path)
        original_write_table(path, frame)

    original_write_table = TraceStore._write_table
    writer_store._write_table = write_then_die
    writer_store.write_run(key, make_manifest(), make_tables())


def run_processes(target, args_list) -> None:
    processes = [multiprocessing.get_context("spawn").Process(target=target, args=args) for args in args_list]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert all(process.exitcode == 0 for process in processes), [process.exitcode for process in processes]


# Root resolution --------------------------------------------------------------------------------


def test_default_root_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SPINAL_STORE", str(tmp_path / "custom"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    assert default_store_root() == tmp_path / "custom"


def test_default_root_from_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("SPINAL_STORE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    assert default_store_root() == tmp_path / "xdg" / "spinal" / "store"


def test_default_root_relative_xdg_ignored(monkeypatch, tmp_path):
    monkeypatch.delenv("SPINAL_STORE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    monkeypatch.setenv("HOME", str(tmp_path))

    assert default_store_root() == tmp_path / ".cache" / "spinal" / "store"


def test_default_root_home_fallback(monkeypatch, tmp_path):
    monkeypatch.delenv("SPINAL_STORE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))

    assert default_store_root() == tmp_path / ".cache" / "spinal" / "store"


def test_store_uses_env_root(monkeypatch, tmp_path):
    monkeypatch.setenv("SPINAL_STORE", str(tmp_path / "env-store"))

    assert TraceStore().root == tmp_path / "env-store"


# Writing and reading ----------------------------------------------------------------------------


def test_write_run_round_trip(store):
    key = key_for("round trip")
    tables = make_tables()

    written = store.write_run(key, make_manifest(label="tiny"), tables)
    found = store.find(key)

    assert found is not None
    assert found.run_id == key[:16]
    assert written.path == store.runs_dir / key[:16]
    for name in TABLE_NAMES:
        pd.testing.assert_frame_equal(found.table(name), tables[name], check_dtype=False)


def test_write_run_fills_manifest(store):
    key = key_for("manifest")
    run = store.write_run(key, make_manifest(), make_tables())

    stored = json.loads((run.path / "manifest.json").read_text())

    assert stored["run_id"] == key[:16]
    assert stored["key"] == key
    assert stored["schema_version"] == SCHEMA_VERSION
    assert stored["created"].endswith("+00:00")
    assert stored["tables"]["layers"] == 4


def test_write_run_keeps_caller_manifest(store):
    manifest = make_manifest()
    before = json.dumps(manifest, sort_keys=True)

    store.write_run(key_for("copy"), manifest, make_tables())

    assert json.dumps(manifest, sort_keys=True) == before


def test_write_run_casts_schema_dtypes(store):
    tables = make_tables()
    tables["spectra"] = tables["spectra"].astype({"layer": "int32", "k": "int16", "sigma": "float32"})

    run = store.write_run(key_for("dtypes"), make_manifest(), tables)
    spectra = TraceStore(store.root).get(run.run_id).spectra

    assert spectra["layer"].dtype == np.int64
    assert spectra["k"].dtype == np.int64
    assert spectra["sigma"].dtype == np.float64


def test_write_run_empty_replicates(store):
    tables = make_tables()
    tables["replicates"] = empty_table("replicates")

    run = store.write_run(key_for("no replicates"), make_manifest(), tables)

    assert len(run.replicates) == 0
    assert list(run.replicates.columns) == list(TABLE_SCHEMAS["replicates"])


def test_write_run_numpy_manifest_values(store):
    manifest = make_manifest()
    manifest["model"]["n_layers"] = np.int64(3)
    manifest["timings"] = {"total_s": np.float32(1.5)}

    run = store.write_run(key_for("numpy"), manifest, make_tables())

    assert run.manifest["model"]["n_layers"] == 3
    assert run.manifest["timings"]["total_s"] == 1.5


def test_write_run_rejects_nan_manifest(store):
    manifest = make_manifest()
    manifest["timings"] = {"total_s": float("nan")}

    with pytest.raises(StoreError, match="is not valid JSON"):
        store.write_run(key_for("nan"), manifest, make_tables())

    assert store.list_runs() == []


def test_write_run_rejects_mismatched_id(store):
    manifest = make_manifest()
    manifest["run_id"] = "0" * 16

    with pytest.raises(StoreError, match="manifest run_id '0000000000000000' does not match"):
        store.write_run(key_for("mismatch"), manifest, make_tables())


@pytest.mark.parametrize("key", ["abc", "G" * 64, key_for("upper").upper(), None])
def test_write_run_rejects_bad_key(store, key):
    with pytest.raises(StoreError, match="key .* is invalid"):
        store.write_run(key, make_manifest(), make_tables())


def test_write_run_existing_key_kept(store):
    key = key_for("twice")
    first = store.write_run(key, make_manifest(label="first"), make_tables(value=1.0))

    second = store.write_run(key, make_manifest(label="second"), make_tables(value=5.0))

    assert second.run_id == first.run_id
    assert second.label == "first"
    assert second.layers["alpha"].iloc[0] == 1.0
    assert staging_entries(store) == []


def test_write_run_id_collision_rejected(store):
    key = key_for("collision")
    other = key[:16] + ("0" if key[16] != "0" else "1") + key[17:]
    store.write_run(key, make_manifest(), make_tables())

    with pytest.raises(StoreError, match=f"run id {key[:16]} is taken by key {key}"):
        store.write_run(other, make_manifest(), make_tables())

    assert staging_entries(store) == []


def test_write_run_replaces_incomplete_folder(store):
    key = key_for("damaged")
    damaged = store.runs_dir / key[:16]
    damaged.mkdir(parents=True)
    (damaged / "layers.parquet").write_bytes(b"partial")

    run = store.write_run(key, make_manifest(), make_tables())

    assert store.find(key) is not None
    assert len(run.layers) == 4


def test_write_run_unwritable_root(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")

    with pytest.raises(StoreError, match="could not be created .* set SPINAL_STORE to a writable folder"):
        TraceStore(blocker / "store").write_run(key_for("x"), make_manifest(), make_tables())


# Crashes and concurrency ------------------------------------------------------------------------


def test_crash_mid_write_leaves_nothing(store, monkeypatch):
    key = key_for("crash")
    original = TraceStore._write_table
    written = []

    def fail_after_two(path, frame):
        if len(written) == 2:
            raise RuntimeError("simulated crash")
        written.append(path)
        original(path, frame)

    monkeypatch.setattr(TraceStore, "_write_table", staticmethod(fail_after_two))

    with pytest.raises(RuntimeError, match="simulated crash"):
        store.write_run(key, make_manifest(), make_tables())

    assert len(written) == 2
    assert store.list_runs() == []
    assert store.find(key) is None
    assert staging_entries(store) == []


def test_killed_writer_leaves_staging_only(store):
    key = key_for("killed")

    process = multiprocessing.get_context("spawn").Process(target=dying_writer, args=(str(store.root), key))
    process.start()
    process.join(timeout=120)

    assert process.exitcode == 3
    leftovers = staging_entries(store)
    assert len(leftovers) == 1
    assert sorted(path.name for path in leftovers[0].iterdir()) == ["layers.parquet", "prompts.parquet"]
    assert store.list_runs() == []
    assert store.find(key) is None
    assert list(store.runs_dir.iterdir()) == []

    assert store.clean_staging(older_than_s=0) == 1
    assert store.write_run(key, make_manifest(), make_tables()).run_id == key[:16]


def test_locked_writers_compute_once(store):
    key = key_for("locked")
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    results = context.Queue()

    run_processes(locked_writer, [(str(store.root), key, barrier, results)] * 2)
    outcomes = [results.get(timeout=10) for _ in range(2)]

    assert [run_id for run_id, _ in outcomes] == [key[:16], key[:16]]
    assert sorted(computed for _, computed in outcomes) == [False, True]
    assert [info.run_id for info in store.list_runs()] == [key[:16]]
    assert staging_entries(store) == []


def test_unlocked_writers_one_run(store):
    key = key_for("unlocked")
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    results = context.Queue()

    run_processes(unlocked_writer, [(str(store.root), key, barrier, results)] * 2)
    outcomes = [results.get(timeout=10) for _ in range(2)]

    stored = store.find(key)
    assert stored is not None
    assert [run_id for run_id, _ in outcomes] == [key[:16], key[:16]]
    assert {label for _, label in outcomes} == {stored.label}
    assert [info.run_id for info in store.list_runs()] == [key[:16]]
    assert staging_entries(store) == []


def test_lock_excludes_second_holder(store):
    key = key_for("lock")

    with store.lock(key), pytest.raises(filelock.Timeout), store.lock(key, timeout=0.1):
        pass

    with store.lock(key, timeout=0.1):
        assert (store.locks_dir / f"{key}.lock").exists()


# Listing ----------------------------------------------------------------------------------------


def test_list_runs_missing_root(tmp_path):
    store = TraceStore(tmp_path / "never-written")

    assert store.list_runs() == []
    assert not store.root.exists()


def test_list_runs_ignores_junk(store):
    good = store.write_run(key_for("good"), make_manifest(label="good"), make_tables())
    runs = store.runs_dir

    (runs / "not-a-run-id").mkdir()
    (runs / "0123456789abcdef").mkdir()
    (runs / "README.txt").write_text("stray file")

    no_table = runs / "1111111111111111"
    no_table.mkdir()
    (no_table / "manifest.json").write_text(
        json.dumps({"run_id": no_table.name, "schema_version": SCHEMA_VERSION})
    )

    for name, manifest_text in [
        ("2222222222222222", "{not json"),
        ("3333333333333333", json.dumps({"run_id": "ffffffffffffffff", "schema_version": SCHEMA_VERSION})),
        ("4444444444444444", json.dumps({"run_id": "4444444444444444", "schema_version": 99})),
        ("5555555555555555", json.dumps(["a", "list"])),
    ]:
        folder = runs / name
        folder.mkdir()
        for table in TABLE_NAMES:
            (folder / f"{table}.parquet").write_bytes(b"x")
        (folder / "manifest.json").write_text(manifest_text)

    staged = store.staging_dir / "0123456789abcdef0123456789abcdef"
    staged.mkdir(parents=True)
    for path in good.path.iterdir():
        (staged / path.name).write_bytes(path.read_bytes())

    assert [info.run_id for info in store.list_runs()] == [good.run_id]


def test_list_runs_sorted_by_created(store):
    for index, created in enumerate(
        ["2024-03-01T10:00:00+00:00", "2024-01-01T10:00:00Z", "2024-02-01T10:00:00"]
    ):
        store.write_run(key_for(index), make_manifest(label=f"run {index}", created=created), make_tables())

    assert [info.label for info in store.list_runs()] == ["run 1", "run 2", "run 0"]


def test_list_runs_reads_no_parquet(store, monkeypatch):
    for index in range(25):
        store.write_run(key_for(("many", index)), make_manifest(label=f"run {index:02d}"), make_tables())

    def forbidden(*args, **kwargs):
        raise AssertionError("list_runs read a parquet file")

    monkeypatch.setattr(pd, "read_parquet", forbidden)
    infos = TraceStore(store.root).list_runs()

    assert len(infos) == 25
    assert all(isinstance(info, RunInfo) for info in infos)
    assert infos[0].n_layers == 3
    assert infos[0].prompt_sha256 == key_for("p")


def test_run_info_fields(store):
    key = key_for("info")
    store.write_run(key, make_manifest(label="labelled", source="/models/tiny"), make_tables())

    (info,) = store.list_runs()

    assert info.run_id == key[:16]
    assert info.key == key
    assert info.label == "labelled"
    assert info.model_source == "/models/tiny"
    assert info.model_type == "llama"
    assert info.prompt_source == "builtin:pydoc-topics"
    assert info.n_prompts == 4
    assert info.series is None


# Lookup -----------------------------------------------------------------------------------------


def test_get_unique_prefix(store):
    key = key_for("prefix")
    store.write_run(key, make_manifest(), make_tables())

    assert store.get(key[:5]).run_id == key[:16]
    assert store.get(key[:16].upper()).run_id == key[:16]


def test_get_ambiguous_prefix(store):
    keys = [key_for(("ambiguous", index)) for index in range(40)]
    for key in keys:
        store.write_run(key, make_manifest(), make_tables(n_layers=1, n_prompts=1))
    first_digits = [key[0] for key in keys]
    shared = next(digit for digit in first_digits if first_digits.count(digit) > 1)

    with pytest.raises(StoreError, match=f"prefix '{shared}' matches several runs"):
        store.get(shared)


def test_get_missing_names_id(store):
    with pytest.raises(StoreError) as caught:
        store.get("deadbeef")

    message = str(caught.value)
    assert "run 'deadbeef' not found" in message
    assert "run `spinal runs` to list runs" in message


def test_get_non_hex_rejected(store):
    with pytest.raises(StoreError, match="run '../etc' not found"):
        store.get("../etc")


def test_get_other_schema_version(store):
    run = store.write_run(key_for("schema"), make_manifest(), make_tables())
    manifest = json.loads((run.path / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (run.path / "manifest.json").write_text(json.dumps(manifest))

    with pytest.raises(StoreError, match="schema version 99"):
        store.get(run.run_id)


def test_find_unknown_key(store):
    assert store.find(key_for("unknown")) is None


# Run objects ------------------------------------------------------------------------------------


def test_run_tables_cached(store):
    run = store.write_run(key_for("cache"), make_manifest(), make_tables())
    fresh = store.get(run.run_id)

    assert fresh.layers is fresh.layers


def test_run_tables_lazy(store, monkeypatch):
    run = store.write_run(key_for("lazy"), make_manifest(), make_tables())
    calls = []
    original = pd.read_parquet

    def recording_read(path, *args, **kwargs):
        calls.append(Path(path).name)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(pd, "read_parquet", recording_read)

    fresh = store.get(run.run_id)
    assert calls == []

    first = fresh.spectra
    second = fresh.spectra
    assert calls == ["spectra.parquet"]
    assert first is second


def test_run_corrupt_table_error(store):
    run = store.write_run(key_for("corrupt"), make_manifest(), make_tables())
    (run.path / "layers.parquet").write_bytes(b"not parquet")

    with pytest.raises(StoreError, match=f"table layers of run {run.run_id} could not be read"):
        _ = store.get(run.run_id).layers


def test_run_unknown_table_name(store):
    run = store.write_run(key_for("table name"), make_manifest(), make_tables())

    with pytest.raises(StoreError, match="table 'tokens' is unknown"):
        run.table("tokens")


def test_run_label_defaults(store):
    plain = store.write_run(key_for("plain"), make_manifest(source="/models/tiny-llama"), make_tables())
    series_manifest = make_manifest()
    series_manifest["series"] = {"name": "dpo", "step": 40, "epoch": 1.0}
    series = store.write_run(key_for("series"), series_manifest, make_tables())

    assert plain.label == f"tiny-llama ({plain.run_id[:8]})"
    assert series.label == f"dpo step 40 ({series.run_id[:8]})"


# Aliases, deletion, cleanup ---------------------------------------------------------------------


def test_alias_round_trip(store):
    run = store.write_run(key_for("aliased"), make_manifest(), make_tables())
    request_key = key_for("request")

    assert store.alias(request_key) is None
    store.set_alias(request_key, run.run_id)

    assert store.alias(request_key) == run.run_id


def test_alias_to_missing_run(store):
    request_key = key_for("dangling")
    store.set_alias(request_key, "abcdef0123456789")

    assert store.alias(request_key) is None


def test_set_alias_invalid_run_id(store):
    with pytest.raises(StoreError, match="run id 'xyz' is invalid"):
        store.set_alias(key_for("r"), "xyz")


def test_delete_removes_run_and_alias(store):
    run = store.write_run(key_for("delete me"), make_manifest(), make_tables())
    other_run = store.write_run(key_for("keep me"), make_manifest(), make_tables())
    store.set_alias(key_for("request a"), run.run_id)
    store.set_alias(key_for("request b"), other_run.run_id)

    store.delete(run.run_id)

    assert [info.run_id for info in store.list_runs()] == [other_run.run_id]
    assert not (store.aliases_dir / f"{key_for('request a')}.json").exists()
    assert store.alias(key_for("request b")) == other_run.run_id
    assert staging_entries(store) == []


def test_delete_missing_run(store):
    with pytest.raises(StoreError, match="run 'abcdef0123456789' not found"):
        store.delete("abcdef0123456789")


def test_clean_staging_keeps_recent(store):
    store.staging_dir.mkdir(parents=True)
    recent = store.staging_dir / "recent"
    recent.mkdir()
    old = store.staging_dir / "old"
    old.mkdir()
    stale = time.time() - 7200
    os.utime(old, (stale, stale))

    assert store.clean_staging() == 1
    assert [path.name for path in staging_entries(store)] == ["recent"]


# Table validation -------------------------------------------------------------------------------


def test_validate_tables_accepts_valid():
    validate_tables(make_tables())


def test_validate_tables_names_missing_columns():
    tables = make_tables()
    tables["layers"] = tables["layers"].drop(columns=["alpha", "transport_status"])

    with pytest.raises(StoreError) as caught:
        validate_tables(tables)

    assert "table 'layers' is missing columns alpha, transport_status" in str(caught.value)


def test_validate_tables_missing_and_unknown():
    tables = make_tables()
    del tables["spectra"]
    tables["tokens"] = pd.DataFrame()

    with pytest.raises(StoreError) as caught:
        validate_tables(tables)

    message = str(caught.value)
    assert "missing tables: spectra" in message
    assert "unknown tables: tokens" in message


def test_validate_tables_wrong_dtype():
    tables = make_tables()
    tables["layers"]["fit_k_min"] = tables["layers"]["fit_k_min"].astype(float)
    tables["layers"].loc[0, "fit_k_min"] = np.nan

    with pytest.raises(StoreError, match="column 'fit_k_min' has dtype float64, expected int64"):
        validate_tables(tables)


def test_validate_tables_non_string_column():
    tables = make_tables()
    tables["prompts"]["text"] = [1, "b", "c", "d"]

    with pytest.raises(StoreError, match="column 'text' has dtype object, expected str"):
        validate_tables(tables)


def test_validate_tables_missing_strings():
    tables = make_tables()
    tables["layers"]["alpha_warning"] = [None, "", "", ""]

    with pytest.raises(
        StoreError, match="column 'alpha_warning' has missing values, expected str in every row"
    ):
        validate_tables(tables)


def test_validate_tables_not_dataframe():
    tables = make_tables()
    tables["spectra"] = [1, 2, 3]

    with pytest.raises(StoreError, match="table 'spectra' is a list, not a DataFrame"):
        validate_tables(tables)


def test_validate_tables_empty_tables():
    validate_tables({name: empty_table(name) for name in TABLE_NAMES})


def test_list_runs_orders_same_instant_by_step(tmp_path):
    store = TraceStore(tmp_path / "store")
    for step in (4, 0, 2):
        key = hashlib.sha256(f"run-{step}".encode()).hexdigest()
        manifest = {"created": "2026-01-01T00:00:00+00:00", "label": f"step {step}", "series": {"name": "s", "step": step}}
        store.write_run(key, manifest, make_tables())

    steps = [info.series["step"] for info in store.list_runs()]

    assert steps == [0, 2, 4]
