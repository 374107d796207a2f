"""The ``spinal`` command: trace, runs, export, compare, and its error messages."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import pandas as pd
import pytest

from conftest import HH_PROMPTS, STORIES_MODEL, require_shared_data
from spinal.cli import main
from spinal.store import TraceStore
from tiny_models import save_tiny

FAST = ["--bootstrap", "20", "--groups", "4"]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli-models") / "tiny-llama"
    save_tiny("llama", path)
    return path


@pytest.fixture()
def prompt_file(tmp_path):
    path = tmp_path / "prompts.txt"
    lines = [f"prompt {index} asks about the weather and the number {index * 3}" for index in range(24)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spinal", *args], capture_output=True, text=True, timeout=600)


def traced_run_id(capsys, *args: str) -> str:
    assert main(["trace", *args]) == 0
    return capsys.readouterr().out.strip().splitlines()[-1].split("\t")[0]


def test_trace_prints_run_id(saved_model, prompt_file, tmp_path, capsys):
    store = tmp_path / "store"

    run_id = traced_run_id(capsys, str(saved_model), "--prompts", str(prompt_file), "--store", str(store), *FAST)

    assert len(run_id) == 16
    assert TraceStore(store).get(run_id).run_id == run_id


def test_trace_two_models_print_two_lines(saved_model, prompt_file, tmp_path, capsys):
    second = tmp_path / "tiny-gpt2"
    save_tiny("gpt2", second)

    code = main(["trace", str(saved_model), str(second), "--prompts", str(prompt_file), "--store", str(tmp_path / "s"), *FAST])
    lines = capsys.readouterr().out.strip().splitlines()

    assert code == 0
    assert len(lines) == 2


def test_runs_lists_traced_run(saved_model, prompt_file, tmp_path, capsys):
    store = tmp_path / "store"
    run_id = traced_run_id(capsys, str(saved_model), "--prompts", str(prompt_file), "--store", str(store), *FAST)

    main(["runs", "--store", str(store)])

    assert run_id in capsys.readouterr().out


def test_runs_empty_store_says_next_step(tmp_path, capsys):
    main(["runs", "--store", str(tmp_path / "empty")])

    assert "spinal trace" in capsys.readouterr().out


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".json"])
def test_export_writes_layer_table(saved_model, prompt_file, tmp_path, capsys, suffix):
    store = tmp_path / "store"
    run_id = traced_run_id(capsys, str(saved_model), "--prompts", str(prompt_file), "--store", str(store), *FAST)
    out = tmp_path / f"layers{suffix}"

    assert main(["export", run_id[:6], "--out", str(out), "--store", str(store)]) == 0

    if suffix == ".csv":
        table = pd.read_csv(out)
    elif suffix == ".parquet":
        table = pd.read_parquet(out)
    else:
        table = pd.DataFrame(json.loads(out.read_text()))
    assert len(table) == TraceStore(store).get(run_id).manifest["model"]["n_layers"] + 1
    assert {"run_id", "layer", "alpha", "alpha_status", "transport"} <= set(table.columns)


def test_export_unknown_suffix_fails(saved_model, prompt_file, tmp_path, capsys):
    store = tmp_path / "store"
    run_id = traced_run_id(capsys, str(saved_model), "--prompts", str(prompt_file), "--store", str(store), *FAST)

    code = main(["export", run_id, "--out", str(tmp_path / "layers.xlsx"), "--store", str(store)])

    assert code == 2
    assert "use .csv, .parquet or .json" in capsys.readouterr().err
    assert not (tmp_path / "layers.xlsx").exists()


def test_compare_prints_deltas_and_verdict(saved_model, prompt_file, tmp_path, capsys):
    store = tmp_path / "store"
    first = traced_run_id(capsys, str(saved_model), "--prompts", str(prompt_file), "--store", str(store), *FAST)
    second = traced_run_id(
        capsys, str(saved_model), "--prompts", str(prompt_file), "--store", str(store), "--positions", "all", *FAST
    )

    assert main(["compare", first, second, "--store", str(store)]) == 0
    captured = capsys.readouterr()

    assert "d_alpha" in captured.out
    assert "signature (alpha up and transport down in the band)" in captured.out
    assert "different trace settings" in captured.err


def test_compare_unknown_run_fails(tmp_path, capsys):
    code = main(["compare", "0123456789abcdef", "fedcba9876543210", "--store", str(tmp_path / "store")])

    assert code == 2
    assert "spinal runs" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["trace", "./no-such-model", "--prompts", "p.txt"], "not found"),
        (["trace", "MODEL", "--prompts", "missing.txt"], "missing.txt"),
        (["trace", "MODEL", "--prompts", "PROMPTS", "--drop-top", "0.9"], "--fit-until 0.5"),
        (["trace", "MODEL", "--prompts", "PROMPTS", "--batch-size", "0"], "--batch-size 0"),
        (["trace", "MODEL", "--prompts", "PROMPTS", "--max-prompts", "0"], "--max-prompts"),
        (["trace", "MODEL", "--prompts", "PROMPTS", "--seed", "-1"], "--seed -1"),
        (["trace", "MODEL", "--prompts", "PROMPTS", "--bootstrap", "-1"], "--bootstrap -1"),
        (["trace", "MODEL", "./missing-second-model", "--prompts", "PROMPTS"], "missing-second-model"),
        (["trace", "bad id!!", "--prompts", "PROMPTS"], "bad id!!"),
        (["trace", "MODEL", "--prompts", "PROMPTS", "--no-such-option"], "--no-such-option"),
    ],
)
def test_cli_errors_are_one_line(saved_model, prompt_file, tmp_path, arguments, message):
    placeholders = {"MODEL": str(saved_model), "PROMPTS": str(prompt_file)}
    replaced = [placeholders.get(arg, arg) for arg in arguments]

    completed = run_cli(*replaced, "--store", str(tmp_path / "store"))

    assert completed.returncode == 2
    assert message in completed.stderr
    assert "Traceback" not in completed.stderr
    assert len(completed.stderr.strip().splitlines()) == 1
    assert TraceStore(tmp_path / "store").list_runs() == []


def test_two_models_checked_before_tracing(saved_model, prompt_file, tmp_path):
    completed = run_cli("trace", str(saved_model), str(tmp_path / "missing"), "--prompts", str(prompt_file), "--store", str(tmp_path / "s"))

    assert completed.returncode == 2
    assert completed.stdout == ""


def test_context_overflow_names_max_tokens(tmp_path):
    model = tmp_path / "tiny-gpt2"
    save_tiny("gpt2", model)
    prompts = tmp_path / "long.txt"
    prompts.write_text(" ".join(["word"] * 400) + "\n", encoding="utf-8")

    completed = run_cli("trace", str(model), "--prompts", str(prompts), "--store", str(tmp_path / "s"))

    assert completed.returncode == 2
    assert "pass --max-tokens" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_export_to_directory_rejected(saved_model, prompt_file, tmp_path, capsys):
    store = tmp_path / "store"
    run_id = traced_run_id(capsys, str(saved_model), "--prompts", str(prompt_file), "--store", str(store), *FAST)
    target = tmp_path / "out.csv"
    target.mkdir()

    code = main(["export", run_id, "--out", str(target), "--store", str(store)])

    assert code == 2
    assert "is a directory" in capsys.readouterr().err
    assert not (tmp_path / ".out.csv.partial").exists()


def test_runs_reports_damaged_run(saved_model, prompt_file, tmp_path, capsys):
    store = tmp_path / "store"
    run_id = traced_run_id(capsys, str(saved_model), "--prompts", str(prompt_file), "--store", str(store), *FAST)
    (store / "runs" / run_id / "layers.parquet").unlink()

    main(["runs", "--store", str(store)])
    listing = capsys.readouterr()
    code = main(["export", run_id, "--out", str(tmp_path / "x.csv"), "--store", str(store)])

    assert "is damaged" in listing.err
    assert code == 2
    assert "is damaged" in capsys.readouterr().err


def test_store_path_that_is_a_file_rejected(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("x")

    code = main(["runs", "--store", str(path)])

    assert code == 2
    assert "not a directory" in capsys.readouterr().err


def test_cli_debug_shows_traceback(tmp_path):
    completed = run_cli("--debug", "trace", "./no-such-model", "--prompts", "p.txt", "--store", str(tmp_path / "s"))

    assert completed.returncode != 0
    assert "Traceback" in completed.stderr


@pytest.mark.slow
def test_real_checkpoint_trace_and_stored_repeat(tmp_path):
    require_shared_data()
    store = tmp_path / "store"
    arguments = [str(STORIES_MODEL), "--prompts", str(HH_PROMPTS), "--max-prompts", "256", "--store", str(store)]

    first = run_cli("trace", *arguments)
    assert first.returncode == 0, first.stderr
    run_id = first.stdout.split("\t")[0]

    layers = TraceStore(store).get(run_id).layers
    assert len(layers) == 6
    assert (layers["alpha_status"] == "ok").all()
    assert all(math.isfinite(value) for value in layers["alpha"])

    probe = (
        "import sys, time; start = time.perf_counter(); from spinal.cli import main; "
        f"code = main(['trace', *{arguments!r}]); "
        "print('seconds', time.perf_counter() - start); "
        "print('torch imported' if 'torch' in sys.modules else 'torch not imported'); sys.exit(code)"
    )
    started = time.perf_counter()
    second = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - started

    assert second.returncode == 0, second.stderr
    assert f"{run_id}\tstored" in second.stdout
    assert "torch not imported" in second.stdout
    print(f"stored repeat: {elapsed:.2f} s in a fresh interpreter; {second.stdout.split()[-4]} s after start-up")


def test_trace_checkpoint_folders_form_series(prompt_file, tmp_path, capsys):
    output_dir = tmp_path / "dpo-run"
    for step, seed in ((4, 1), (2, 0)):
        save_tiny("llama", output_dir / f"checkpoint-{step}", seed=seed)
        (output_dir / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"epoch": step / 4}))
    store = tmp_path / "store"

    assert main(["trace", str(output_dir), "--prompts", str(prompt_file), "--store", str(store), *FAST]) == 0
    run_ids = [line.split("\t")[0] for line in capsys.readouterr().out.strip().splitlines()]
    series = [TraceStore(store).get(run_id).manifest["series"] for run_id in run_ids]

    assert [entry["step"] for entry in series] == [2, 4]
    assert {entry["name"] for entry in series} == {"dpo-run"}
    assert series[1]["epoch"] == 1.0


def test_checkpoints_flag_without_checkpoints_fails(saved_model, prompt_file, tmp_path, capsys):
    code = main(["trace", str(saved_model), "--checkpoints", "--prompts", str(prompt_file), "--store", str(tmp_path / "s")])

    assert code == 2
    assert "no checkpoint-N folders" in capsys.readouterr().err
