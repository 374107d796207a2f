"""Command-line interface: ``spinal trace``, ``runs``, ``export``, ``compare``, ``demo`` and ``dashboard``.

Heavy modules (torch, transformers, pandas) are imported inside the subcommands, so a
repeated ``spinal trace`` that finds its stored run starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from spinal.errors import SettingsError, SpinalError
from spinal.settings import BootstrapSettings, FitSettings, TokenSettings, TraceSettings

logger = logging.getLogger(__name__)

EXPORT_FORMATS = (".csv", ".parquet", ".json")


def _add_store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        default=None,
        help="Trace store directory (default: $SPINAL_STORE, else $XDG_CACHE_HOME/spinal/store, "
        "else ~/.cache/spinal/store).",
    )


def _add_trace_settings(parser: argparse.ArgumentParser) -> None:
    fit, tokens, bootstrap = FitSettings(), TokenSettings(), BootstrapSettings()

    group = parser.add_argument_group("token selection")
    group.add_argument("--max-tokens", type=int, default=tokens.max_tokens, help="Truncate each prompt to this many tokens (default %(default)s).")
    group.add_argument(
        "--positions",
        choices=["skip-first", "all", "last"],
        default=tokens.positions,
        help="Token positions that enter the statistics (default %(default)s: drop position 0, the BOS/first token).",
    )
    group.add_argument("--chat-template", action="store_true", help="Wrap each prompt as a user turn with the tokenizer's chat template.")
    group.add_argument("--no-special-tokens", action="store_true", help="Do not let the tokenizer add BOS or other special tokens.")

    group = parser.add_argument_group("tail fit of alpha")
    group.add_argument("--no-center", action="store_true", help="Do not subtract the per-feature mean of H before the spectrum.")
    group.add_argument("--drop-top", type=float, default=fit.drop_top, help="Fraction of the rank dropped from the top of the spectrum (default %(default)s).")
    group.add_argument("--fit-until", type=float, default=fit.fit_until, help="Fraction of the rank where the fit window ends (default %(default)s).")
    group.add_argument("--min-points", type=int, default=fit.min_points, help="Minimum number of singular values in the window for a fit (default %(default)s).")
    group.add_argument("--rel-floor", type=float, default=fit.rel_floor, help="Singular values below this fraction of the largest count as zero (default %(default)s).")
    group.add_argument("--gram-dtype", choices=["float64", "float32"], default="float64", help="Precision of the streamed Gram matrices (default %(default)s).")

    group = parser.add_argument_group("bootstrap intervals over prompts")
    group.add_argument("--bootstrap", type=int, default=bootstrap.replicates, help="Bootstrap replicates; 0 turns intervals off (default %(default)s).")
    group.add_argument("--groups", type=int, default=bootstrap.groups, help="Prompt groups resampled by the bootstrap (default %(default)s).")
    group.add_argument("--level", type=float, default=bootstrap.level, help="Confidence level of the intervals (default %(default)s).")
    group.add_argument("--seed", type=int, default=bootstrap.seed, help="Seed of the bootstrap draws (default %(default)s).")
    group.add_argument(
        "--max-gram-mib",
        type=int,
        default=bootstrap.max_gram_bytes // 1024**2,
        help="Memory cap in MiB for the per-group Gram matrices that alpha intervals need (default %(default)s).",
    )


def settings_from_args(args: argparse.Namespace) -> TraceSettings:
    """Build validated trace settings from parsed command-line options."""
    settings = TraceSettings(
        fit=FitSettings(
            center=not args.no_center,
            drop_top=args.drop_top,
            fit_until=args.fit_until,
            min_points=args.min_points,
            rel_floor=args.rel_floor,
        ),
        tokens=TokenSettings(
            positions=args.positions,
            max_tokens=args.max_tokens,
            chat_template=args.chat_template,
            add_special_tokens=not args.no_special_tokens,
        ),
        bootstrap=BootstrapSettings(
            replicates=args.bootstrap,
            groups=args.groups,
            level=args.level,
            seed=args.seed,
            max_gram_bytes=args.max_gram_mib * 1024**2,
        ),
        gram_dtype=args.gram_dtype,
    )
    settings.validate()
    return settings


class _Parser(argparse.ArgumentParser):
    """Argument parser whose usage errors are one line that points to ``--help``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


OPTION_NAMES = {
    "drop_top": "--drop-top",
    "fit_until": "--fit-until",
    "min_points": "--min-points",
    "rel_floor": "--rel-floor",
    "max_tokens": "--max-tokens",
    "positions": "--positions",
    "replicates": "--bootstrap",
    "groups": "--groups",
    "level": "--level",
    "seed": "--seed",
    "max_gram_bytes": "--max-gram-mib",
    "gram_dtype": "--gram-dtype",
    "batch_size": "--batch-size",
    "max_prompts": "--max-prompts",
}
"""Settings fields and the CLI options that set them, for error messages."""


def _with_option_names(message: str) -> str:
    """Replace ``field=value`` in a settings error with the CLI option that sets the field."""
    for field_name, option in OPTION_NAMES.items():
        message = re.sub(rf"\b{field_name}=", f"{option} ", message)
    return message


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``spinal`` command."""
    parser = _Parser(
        prog="spinal",
        description="Layer-by-layer contraction (alpha) and transport traces of causal language models.",
    )
    parser.add_argument("--debug", action="store_true", help="Show full tracebacks on errors.")
    parser.add_argument("-v", "--verbose", action="store_true", help="Log progress messages.")
    subparsers = parser.add_subparsers(dest="command", required=True)

    trace = subparsers.add_parser("trace", help="Trace one or more checkpoints and print one run id per model.")
    trace.add_argument("models", nargs="+", metavar="MODEL", help="Local checkpoint directory or Hugging Face hub id.")
    trace.add_argument("--prompts", required=True, help="Prompt file (.txt, .jsonl, HH-RLHF .jsonl[.gz]) or builtin:NAME.")
    _add_store_option(trace)
    trace.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1 or mps (default %(default)s).")
    trace.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"], help="Forward dtype; auto is bfloat16 on CUDA, float32 elsewhere.")
    trace.add_argument("--batch-size", type=int, default=8, help="Prompts per forward pass (default %(default)s).")
    trace.add_argument("--max-prompts", type=int, default=None, help="Use only the first N prompts.")
    trace.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) for hub ids.")
    trace.add_argument("--label", default=None, help="Display name of the run (one model only).")
    trace.add_argument(
        "--checkpoints",
        action="store_true",
        help="Trace the checkpoint-N folders inside each MODEL directory as one training series "
        "(automatic for a directory that has checkpoint-N folders and no config.json).",
    )
    trace.add_argument("--series-name", default=None, help="Name of the training series (default: the directory's name).")
    trace.add_argument("--trust-remote-code", action="store_true", help="Allow Python code shipped with the checkpoint to run.")
    trace.add_argument("--allow-pickle", action="store_true", help="Allow pickled .bin weights when a checkpoint has no safetensors.")
    _add_trace_settings(trace)

    runs = subparsers.add_parser("runs", help="List the runs in the trace store.")
    _add_store_option(runs)

    export = subparsers.add_parser("export", help="Write a run's per-layer table to CSV, Parquet or JSON.")
    export.add_argument("run", metavar="RUN", help="Run id (a unique prefix is enough).")
    export.add_argument("--out", required=True, help="Output file; the format follows the suffix: .csv, .parquet or .json.")
    _add_store_option(export)

    compare = subparsers.add_parser("compare", help="Print per-layer deltas of alpha and transport (RUN_B minus RUN_A).")
    compare.add_argument("run_a", metavar="RUN_A", help="Reference run id (for example the SFT checkpoint).")
    compare.add_argument("run_b", metavar="RUN_B", help="Target run id (for example the DPO checkpoint).")
    compare.add_argument("--band", type=float, default=2 / 3, help="Start of the terminal band in relative depth (default: the last third, 0.667).")
    compare.add_argument("--band-end", type=float, default=1.0, help="End of the terminal band in relative depth (default %(default)s).")
    _add_store_option(compare)

    demo = subparsers.add_parser("demo", help="Build the offline demo (a small model, its DPO run, their traces) and start the dashboard.")
    demo.add_argument("--dir", default=None, help="Where the demo checkpoints go (default: next to the store, <store>/../demo).")
    demo.add_argument("--force", action="store_true", help="Rebuild every stage even if it exists.")
    demo.add_argument("--no-dashboard", action="store_true", help="Build only; do not start the dashboard.")
    demo.add_argument("--port", type=int, default=8501, help="Dashboard port on 127.0.0.1 (default %(default)s).")
    _add_store_option(demo)

    dashboard = subparsers.add_parser("dashboard", help="Start the dashboard on 127.0.0.1.")
    dashboard.add_argument("--port", type=int, default=8501, help="Port on 127.0.0.1 (default %(default)s).")
    _add_store_option(dashboard)

    return parser


def _open_store(path: str | None):
    from spinal.store import TraceStore

    return TraceStore(path)


def command_trace(args: argparse.Namespace) -> int:
    """Trace each model and print its run id."""
    from spinal.engine import check_model_source, trace

    settings = settings_from_args(args)
    if args.label and len(args.models) > 1:
        raise SpinalError(f"--label applies to one model, but {len(args.models)} were given: drop --label or trace them one by one.")

    jobs = _trace_jobs(args)
    for source, _series, _label in jobs:
        check_model_source(source, revision=args.revision, allow_pickle=args.allow_pickle)

    store = _open_store(args.store)
    for source, series, label in jobs:
        result = trace(
            source,
            args.prompts,
            store=store,
            settings=settings,
            device=args.device,
            dtype=args.dtype,
            batch_size=args.batch_size,
            max_prompts=args.max_prompts,
            revision=args.revision,
            trust_remote_code=args.trust_remote_code,
            allow_pickle=args.allow_pickle,
            label=label,
            series=series,
        )
        origin = "stored" if result.cached else "computed"
        print(f"{result.run_id}\t{origin}\t{result.run.manifest.get('label', source)}", flush=True)
        for warning in result.run.manifest.get("warnings", []):
            print(f"warning: run {result.run_id}: {warning}", file=sys.stderr)
    return 0


def _trace_jobs(args: argparse.Namespace) -> list[tuple[str, dict | None, str | None]]:
    """Expand the MODEL arguments into (source, series, label) triples, one per checkpoint."""
    from spinal.engine import find_series_checkpoints

    jobs: list[tuple[str, dict | None, str | None]] = []
    for model in args.models:
        path = Path(model).expanduser()
        expand = path.is_dir() and (args.checkpoints or not (path / "config.json").is_file())
        checkpoints = find_series_checkpoints(path, name=args.series_name) if expand else []

        if checkpoints:
            for checkpoint in checkpoints:
                series = checkpoint.series
                jobs.append((str(checkpoint.path), series, f"{series['name']} step {series['step']}"))
        elif args.checkpoints:
            raise SpinalError(
                f"{model} has no checkpoint-N folders with a config.json: drop --checkpoints, "
                "or pass the Trainer's output_dir."
            )
        else:
            jobs.append((model, None, args.label))

    return jobs


def command_runs(args: argparse.Namespace) -> int:
    """Print one line per complete run in the store."""
    store = _open_store(args.store)
    infos = store.list_runs()
    for run_id, reason in store.damaged_runs():
        print(f"warning: run folder {run_id} is damaged ({reason}) and not listed: delete it and trace again.", file=sys.stderr)

    if not infos:
        print(f"No runs in {store.root}. Trace a checkpoint with `spinal trace MODEL --prompts FILE` or build the demo with `spinal demo`.")
        return 0

    print(f"{'run_id':16}  {'created':29}  {'blocks':>6}  {'prompt set':10}  {'series':18}  label")
    for info in infos:
        series = ""
        if info.series:
            series = f"{info.series.get('name', '')}@{info.series.get('step', '')}"
        print(f"{info.run_id:16}  {info.created:29}  {info.n_layers:>6}  {info.prompt_sha256[:10]:10}  {series[:18]:18}  {info.label}")
    return 0


def command_export(args: argparse.Namespace) -> int:
    """Write the per-layer table of one run, atomically."""
    out = Path(args.out)
    suffix = out.suffix.lower()
    if suffix not in EXPORT_FORMATS:
        raise SpinalError(f"Output {args.out} has an unknown format {suffix or '(none)'}: use .csv, .parquet or .json.")

    if not out.parent.is_dir():
        raise SpinalError(f"Output directory {out.parent} does not exist: create it first.")

    if out.is_dir():
        raise SpinalError(f"Output {args.out} is a directory: pass a file name such as {out / ('layers' + suffix)}.")

    store = _open_store(args.store)
    run = store.get(args.run)
    table = run.layers.copy()
    table.insert(0, "run_id", run.run_id)
    table.insert(1, "label", run.manifest.get("label", ""))

    staging = out.with_name(f".{out.name}.partial")
    try:
        if suffix == ".csv":
            table.to_csv(staging, index=False)
        elif suffix == ".parquet":
            table.to_parquet(staging, index=False)
        else:
            table.to_json(staging, orient="records", indent=2)
        os.replace(staging, out)
    except OSError as error:
        raise SpinalError(f"Could not write {args.out} ({error.strerror or error}): choose a writable path.") from error
    finally:
        staging.unlink(missing_ok=True)

    print(f"Wrote {len(table)} layers of run {run.run_id} to {out}")
    return 0


def command_compare(args: argparse.Namespace) -> int:
    """Print per-layer deltas and the terminal-band summary of two runs."""
    from spinal.stats import compare_runs

    store = _open_store(args.store)
    reference = store.get(args.run_a)
    target = store.get(args.run_b)
    if reference.run_id == target.run_id:
        print(f"warning: RUN_A and RUN_B are the same run {reference.run_id}, so every delta is zero.", file=sys.stderr)

    comparison = compare_runs(reference, target, band=(args.band, args.band_end))
    print(format_comparison(comparison, reference.label, target.label))
    for warning in comparison.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _signed(value: float, width: int) -> str:
    if value != value:
        return f"{'n/a':>{width}}"
    return f"{value:>+{width}.4f}"


def _share(value: float) -> str:
    return "n/a" if value != value else f"{value:.0%}"


def _interval(low: float, high: float) -> str:
    if low != low or high != high:
        return "[no interval]"
    return f"[{low:+.4f}, {high:+.4f}]"


def format_comparison(comparison, reference_label: str, target_label: str) -> str:
    """Return a comparison as a per-layer text table followed by the terminal-band summary."""
    summary = comparison.summary
    percent = int(round(summary.level * 100))
    lines = [
        f"reference {comparison.ref_id} ({reference_label})  ->  target {comparison.target_id} ({target_label})",
        f"delta = target - reference; intervals: {percent}% paired bootstrap over prompt groups",
        "",
        f"{'layer':>5} {'depth':>6} {'band':>4}  {'d_alpha':>9} {'interval':>21}  {'d_transport':>11} {'interval':>21}",
    ]
    for row in comparison.table.itertuples(index=False):
        lines.append(
            f"{row.layer:>5} {row.depth:>6.3f} {'*' if row.in_band else '':>4}  "
            f"{_signed(row.delta_alpha, 9)} {_interval(row.delta_alpha_low, row.delta_alpha_high):>21}  "
            f"{_signed(row.delta_transport, 11)} {_interval(row.delta_transport_low, row.delta_transport_high):>21}"
        )

    lines += [
        "",
        f"terminal band (* rows, relative depth {summary.band[0]:.3f} to {summary.band[1]:.3f}):",
        f"  mean delta alpha     {_signed(summary.band_delta_alpha, 0)} "
        f"{_interval(summary.band_delta_alpha_low, summary.band_delta_alpha_high)}, "
        f"share of total |delta| in band {_share(summary.band_share_alpha)}",
        f"  mean delta transport {_signed(summary.band_delta_transport, 0)} "
        f"{_interval(summary.band_delta_transport_low, summary.band_delta_transport_high)}, "
        f"share of total |delta| in band {_share(summary.band_share_transport)}",
        f"  signature (alpha up and transport down in the band): {summary.verdict}",
        f"  {summary.sentence}",
    ]
    return "\n".join(lines)


def command_demo(args: argparse.Namespace) -> int:
    """Build the demo checkpoints and traces, then start the dashboard."""
    from spinal.demo import build_demo

    store = _open_store(args.store)
    root = Path(args.dir) if args.dir else store.root.parent / "demo"
    result = build_demo(root, store, progress=True, force=args.force)
    print(f"Demo ready: {len(result.run_ids)} runs in {store.root}")
    if args.no_dashboard:
        return 0

    from spinal.dashboard import PARAM_REFERENCE, PARAM_RUNS, PARAM_TARGET

    view = {
        PARAM_RUNS: ",".join([result.base_run_id, result.aligned_run_id]),
        PARAM_REFERENCE: result.base_run_id,
        PARAM_TARGET: result.aligned_run_id,
    }
    return _start_dashboard(store.root, args.port, page="compare", view=view)


def command_dashboard(args: argparse.Namespace) -> int:
    """Start the Streamlit dashboard on 127.0.0.1."""
    store = _open_store(args.store)
    return _start_dashboard(store.root, args.port)


def _start_dashboard(store_root: Path, port: int, page: str = "", view: dict[str, str] | None = None) -> int:
    import subprocess
    from urllib.parse import urlencode

    app = Path(__file__).resolve().parent.parent / "app.py"
    if not app.is_file():
        raise SpinalError(f"Dashboard entry point {app} not found: run from a source checkout of SPINAL.")

    environment = dict(os.environ, SPINAL_STORE=str(store_root))
    command = [
        sys.executable, "-m", "streamlit", "run", str(app),
        "--server.address", "127.0.0.1",
        "--server.port", str(port),
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
    ]
    query = f"?{urlencode(view)}" if view else ""
    print(f"Dashboard on http://127.0.0.1:{port}/{page}{query} (store {store_root}); stop with Ctrl+C", flush=True)
    try:
        return subprocess.call(command, env=environment, cwd=app.parent)
    except KeyboardInterrupt:
        return 0


COMMANDS = {
    "trace": command_trace,
    "runs": command_runs,
    "export": command_export,
    "compare": command_compare,
    "demo": command_demo,
    "dashboard": command_dashboard,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``spinal`` command and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verbose:
        # Set before transformers is imported: its weight-loading progress bar and load reports
        # would otherwise fill stderr on every trace.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )

    try:
        return COMMANDS[args.command](args)
    except SpinalError as error:
        if args.debug:
            raise
        message = _with_option_names(str(error)) if isinstance(error, SettingsError) else str(error)
        print(f"spinal {args.command}: error: {message}", file=sys.stderr)
        return 2
    except OSError as error:
        if args.debug:
            raise
        location = f" ({error.filename})" if error.filename else ""
        print(f"spinal {args.command}: error: {error.strerror or error}{location}: check the path and its permissions.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"spinal {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
