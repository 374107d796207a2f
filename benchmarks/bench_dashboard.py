"""Time every dashboard page with many runs selected, through Streamlit's AppTest.

Usage::

    python benchmarks/bench_dashboard.py                 # 20 synthetic runs in a temporary store
    python benchmarks/bench_dashboard.py --store PATH    # an existing store, every run selected

For each page it prints the time of the first visit (cold caches: parquet reads) and the
slowest of ``--repeat`` reruns (warm caches), with the 1 s budget per page script. AppTest runs
the script in this process without a browser, so rendering time in the browser is not included.
The last line reports whether any page script imported torch (none should).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from streamlit.testing.v1 import AppTest

from spinal.store import TraceStore

PAGES = ["overview", "trajectories", "heatmaps", "compare", "side_by_side", "training", "trace", "export"]
BUDGET_S = 1.0


def build_store(root: Path, count: int) -> TraceStore:
    """Write ``count`` synthetic runs of a 12-block model (64 prompts, 200 replicates) to ``root``.

    The runs form one training series (steps 0 to count - 1), so the Training page draws all of them.
    """
    from synthetic_runs import make_run, write_run

    store = TraceStore(root)
    for index in range(count):
        run = make_run(
            f"step-{index:03d}",
            n_layers=12,
            n_prompts=64,
            replicates=200,
            seed=index,
            alpha_shift=0.02 * index,
            transport_shift=-0.001 * index,
            failed_layers=(0,),
            series={"name": "benchmark", "step": index, "epoch": None},
        )
        write_run(store, run)

    return store


def time_page(store: TraceStore, page: str, params: dict[str, str], repeat: int) -> tuple[float, float]:
    """Return (first visit, slowest warm rerun) in seconds for one page."""
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    app.query_params["store"] = str(store.root)
    for name, value in params.items():
        app.query_params[name] = value
    app.run()

    start = time.perf_counter()
    if page != "overview":
        app.switch_page(f"views/{page}.py")
    app.run()
    first = time.perf_counter() - start
    if app.exception:
        raise RuntimeError(f"page {page} raised: {[element.value for element in app.exception]}")

    warm = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        app.run()
        warm = max(warm, time.perf_counter() - start)

    return first, warm


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="Existing trace store; default: a temporary store of synthetic runs.")
    parser.add_argument("--runs", type=int, default=20, help="Synthetic runs to create when --store is not given (default %(default)s).")
    parser.add_argument("--repeat", type=int, default=3, help="Warm reruns per page (default %(default)s).")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="spinal-bench-") as scratch:
        store = TraceStore(args.store) if args.store else build_store(Path(scratch), args.runs)
        infos = store.list_runs()
        if len(infos) < 2:
            print(f"the store at {store.root} has {len(infos)} run(s); the benchmark needs 2 or more")
            return 1

        params = {"runs": ",".join(info.run_id for info in infos), "ref": infos[0].run_id, "target": infos[1].run_id}
        print(f"store {store.root}: {len(infos)} runs, all selected")
        print(f"{'page':<14} {'first visit s':>14} {'warm rerun s':>13}  budget {BUDGET_S:.1f} s")
        slow = []
        for page in PAGES:
            first, warm = time_page(store, page, params, args.repeat)
            status = "ok" if max(first, warm) < BUDGET_S else "SLOW"
            if status == "SLOW":
                slow.append(page)
            print(f"{page:<14} {first:>14.3f} {warm:>13.3f}  {status}")

    print(f"torch imported by the page scripts: {'torch' in sys.modules}")
    if slow:
        print(f"over budget: {', '.join(slow)}")

    return 0


if __name__ == "__main__":
    raise SystemExit(main())
