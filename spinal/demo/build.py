"""``spinal demo``: build a base model, DPO it, and trace every checkpoint, offline on a CPU.

Stages, each in its own folder under the demo root:

1. ``tokenizer/``: byte-level BPE trained on the training passages of the corpus.
2. ``base/``: a Llama model pretrained from scratch on the same passages (plain torch loop).
3. ``dpo/``: TRL DPO on the base model, with ``checkpoint-N`` folders every ``save_every`` steps.
4. Traces of the base model and of every checkpoint on ``builtin:pydoc-heldout``, written to the
   trace store as one training series (the base model is step 0).

A stage is complete when its folder contains ``.complete.json``, written last, whose input hash
matches the current settings and the upstream stages. A second call reuses complete stages and
rebuilds the rest from scratch; the store returns traces it already holds.

Runs are deterministic on one machine: every random draw is seeded and
``torch.use_deterministic_algorithms`` is on during the build. Another CPU type or thread count
may round differently and give other weights.

The default configuration (10 layers, hidden size 128, 2.4 M parameters) built in 162 s on an
idle 2-core CPU machine: pretraining 91 s, DPO 54 s, tracing the 7 models 17 s. Shared machines
were measured several times slower.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock
from tqdm.auto import tqdm

from spinal.demo import corpus
from spinal.demo.align import DPOSchedule
from spinal.demo.pretrain import ModelShape, PretrainSchedule
from spinal.errors import SettingsError
from spinal.settings import BootstrapSettings, TraceSettings, canonical_hash

if TYPE_CHECKING:
    from spinal.store import TraceStore

logger = logging.getLogger(__name__)

DEMO_FORMAT = 1
"""Version of the build recipe; bumping it invalidates every stage marker."""

SERIES_NAME = "demo-dpo"
"""Series name of the demo traces in run manifests."""

BASE_LABEL = "demo-base"
MARKER_NAME = ".complete.json"


@dataclass(frozen=True)
class DemoConfig:
    """Everything that shapes the demo models and traces.

    Attributes:
        seed: Seed of the model initialisation, the pretraining batches and the DPO Trainer.
        vocab_size: Tokenizer vocabulary size.
        shape: Model architecture.
        pretrain: Pretraining settings.
        dpo: DPO settings.
        pair_prompt_words: Words of each DPO prompt (see ``corpus.preference_pairs``).
        pair_completion_words: Words of each DPO completion.
        max_prompts: Trace only the first this many held-out prompts; None traces all.
        trace_settings: Settings of the traces.
        trace_batch_size: Prompts per forward pass while tracing.
    """

    seed: int = 0
    vocab_size: int = 2048
    shape: ModelShape = field(default_factory=ModelShape)
    pretrain: PretrainSchedule = field(default_factory=PretrainSchedule)
    dpo: DPOSchedule = field(default_factory=DPOSchedule)
    pair_prompt_words: int = 24
    pair_completion_words: int = 16
    max_prompts: int | None = None
    trace_settings: TraceSettings = field(default_factory=TraceSettings)
    trace_batch_size: int = 8

    @classmethod
    def tiny(cls) -> DemoConfig:
        """Return a scaled-down configuration that builds in seconds, for tests and smoke runs."""
        return cls(
            vocab_size=512,
            shape=ModelShape(n_layers=2, hidden_size=32, intermediate_size=64, n_heads=2, max_positions=256),
            pretrain=PretrainSchedule(steps=6, batch_size=4, seq_len=64, warmup_steps=2),
            dpo=DPOSchedule(steps=4, save_every=2, batch_size=4, warmup_steps=0, max_length=96),
            max_prompts=16,
            trace_settings=TraceSettings(bootstrap=BootstrapSettings(replicates=20, groups=4)),
            trace_batch_size=8,
        )

    def validate(self) -> None:
        """Raise SettingsError when the settings cannot produce a series of checkpoints."""
        if self.dpo.save_every < 1 or self.dpo.steps < self.dpo.save_every:
            raise SettingsError(
                f"dpo.save_every={self.dpo.save_every} is invalid for dpo.steps={self.dpo.steps}: "
                "use 1 <= save_every <= steps."
            )

        if self.dpo.steps % self.dpo.save_every:
            raise SettingsError(
                f"dpo.steps={self.dpo.steps} is not a multiple of dpo.save_every={self.dpo.save_every}: "
                "make it one, so the last step is saved."
            )

        if self.vocab_size < 300:
            raise SettingsError(f"vocab_size={self.vocab_size} is invalid: use at least 300 (256 bytes plus merges).")

        self.trace_settings.validate()


@dataclass
class DemoResult:
    """Folders, run ids and timings of one ``build_demo`` call.

    Attributes:
        root: Demo folder.
        base_dir: Saved base model.
        checkpoints: DPO checkpoints as (step, folder), in step order.
        base_run_id: Store run of the base model.
        checkpoint_run_ids: Store run of each checkpoint, by step.
        prompt_source: Prompt set the runs were traced on.
        series_name: Series name in the run manifests.
        corpus_sha256: Identity of the corpus the models were trained on.
        timings: Seconds per stage in this call (``tokenizer``, ``pretrain``, ``dpo``, ``trace``, ``total``).
        reused: Per stage, whether this call reused the stage's folder instead of building it.
    """

    root: Path
    base_dir: Path
    checkpoints: list[tuple[int, Path]]
    base_run_id: str
    checkpoint_run_ids: dict[int, str]
    prompt_source: str
    series_name: str
    corpus_sha256: str
    timings: dict[str, float]
    reused: dict[str, bool]

    @property
    def aligned_run_id(self) -> str:
        """Store run of the last DPO checkpoint."""
        return self.checkpoint_run_ids[max(self.checkpoint_run_ids)]

    @property
    def aligned_dir(self) -> Path:
        """Last DPO checkpoint: the aligned model."""
        return self.checkpoints[-1][1]

    @property
    def run_ids(self) -> list[str]:
        """Store runs in series order: base first, then checkpoints by step."""
        return [self.base_run_id, *(self.checkpoint_run_ids[step] for step in sorted(self.checkpoint_run_ids))]


def build_demo(
    root: Path,
    store: TraceStore,
    progress: bool = True,
    force: bool = False,
    config: DemoConfig | None = None,
) -> DemoResult:
    """Build or reuse the demo models and trace them into ``store``.

    Args:
        root: Demo folder; created when missing.
        store: Trace store for the runs.
        progress: Show a progress bar per stage.
        force: Rebuild every stage and recompute the traces this demo folder stored before.
        config: Model and training settings; the default builds the full demo.

    Returns:
        Folders, run ids and per-stage timings.

    Raises:
        SettingsError: When ``config`` is invalid.
        SpinalError: When a trace fails.
    """
    config = config or DemoConfig()
    config.validate()
    root = Path(root).expanduser().absolute()
    root.mkdir(parents=True, exist_ok=True)

    with FileLock(str(root / ".build.lock")), _build_environment():
        return _build_locked(root, store, progress=progress, force=force, config=config)


@contextlib.contextmanager
def _build_environment() -> Iterator[None]:
    """Switch on offline mode and deterministic kernels for the build, and restore them after.

    huggingface_hub reads HF_HUB_OFFLINE once, at import, so its module constant is switched
    too. The transformers progress bars (weight loading and writing) are switched off meanwhile,
    so only the demo's own bar per stage shows.
    """
    import huggingface_hub.constants
    import torch
    from transformers.utils import logging as transformers_logging

    saved = {name: os.environ.get(name) for name in ("HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    was_offline = huggingface_hub.constants.HF_HUB_OFFLINE
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    bars_were_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars_were_enabled:
            transformers_logging.enable_progress_bar()
        torch.use_deterministic_algorithms(was_deterministic)
        huggingface_hub.constants.HF_HUB_OFFLINE = was_offline
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _build_locked(root: Path, store: TraceStore, *, progress: bool, force: bool, config: DemoConfig) -> DemoResult:
    start = time.perf_counter()
    timings: dict[str, float] = {}
    reused: dict[str, bool] = {}

    passages = corpus.split_passages(corpus.load_documents())
    corpus_hash = corpus.corpus_sha256(passages)
    train_texts = [passage.text for passage in corpus.training_passages(passages)]
    pairs = corpus.preference_pairs(
        passages, prompt_words=config.pair_prompt_words, completion_words=config.pair_completion_words
    )
    hashes = _stage_hashes(config, corpus_hash)

    stages = [
        (
            "tokenizer",
            root / "tokenizer",
            partial(_build_tokenizer, train_texts=train_texts, config=config, progress=progress),
        ),
        (
            "pretrain",
            root / "base",
            partial(
                _build_base, tokenizer_dir=root / "tokenizer", train_texts=train_texts, config=config, progress=progress
            ),
        ),
        (
            "dpo",
            root / "dpo",
            partial(_build_dpo, base_dir=root / "base", pairs=pairs, config=config, progress=progress),
        ),
    ]
    rebuild = force
    for stage, folder, build in stages:
        stage_start = time.perf_counter()
        rebuild = _run_stage(folder, stage, hashes[stage], rebuild, reused, build)
        timings[stage] = time.perf_counter() - stage_start

    from spinal.demo.align import saved_checkpoints

    checkpoints = saved_checkpoints(root / "dpo")
    stage_start = time.perf_counter()
    base_run_id, checkpoint_run_ids, computed_any = _trace_stage(
        root, store, checkpoints, config, progress=progress, force=force
    )
    timings["trace"] = time.perf_counter() - stage_start
    reused["trace"] = not computed_any
    timings["total"] = time.perf_counter() - start

    for stage in ("tokenizer", "pretrain", "dpo", "trace"):
        logger.info("demo stage %s: %.1f s%s", stage, timings[stage], " (reused)" if reused[stage] else "")

    return DemoResult(
        root=root,
        base_dir=root / "base",
        checkpoints=checkpoints,
        base_run_id=base_run_id,
        checkpoint_run_ids=checkpoint_run_ids,
        prompt_source=f"builtin:{corpus.HELDOUT_SET_NAME}",
        series_name=SERIES_NAME,
        corpus_sha256=corpus_hash,
        timings={name: round(value, 2) for name, value in timings.items()},
        reused=reused,
    )


def _stage_hashes(config: DemoConfig, corpus_hash: str) -> dict[str, str]:
    """Return each stage's input hash, which covers its settings and the hashes of the stages before it."""
    tokenizer_hash = canonical_hash(
        {
            "format": DEMO_FORMAT,
            "corpus": corpus_hash,
            "vocab_size": config.vocab_size,
            "max_positions": config.shape.max_positions,
        }
    )
    base_hash = canonical_hash(
        {
            "tokenizer": tokenizer_hash,
            "shape": asdict(config.shape),
            "pretrain": asdict(config.pretrain),
            "seed": config.seed,
        }
    )
    dpo_hash = canonical_hash(
        {
            "base": base_hash,
            "dpo": asdict(config.dpo),
            "pair_words": [config.pair_prompt_words, config.pair_completion_words],
            "seed": config.seed,
        }
    )
    return {"tokenizer": tokenizer_hash, "pretrain": base_hash, "dpo": dpo_hash}


def _run_stage(
    folder: Path,
    stage: str,
    input_hash: str,
    rebuild: bool,
    reused: dict[str, bool],
    build: Callable[[Path], dict[str, Any]],
) -> bool:
    """Reuse a complete stage folder, or rebuild it from an empty folder and mark it complete.

    Args:
        folder: Stage folder; deleted and recreated when rebuilt.
        stage: Stage name for logs and the marker.
        input_hash: Hash of the settings and upstream stages the folder must match.
        rebuild: Rebuild even when the marker matches (an upstream stage was rebuilt, or force).
        reused: Filled with ``stage -> True`` when the folder is reused.
        build: Callable that fills the folder and returns a JSON-ready dict of details.

    Returns:
        True when the stage was rebuilt, so downstream stages must be rebuilt too.
    """
    if not rebuild and _marker_matches(folder, input_hash):
        reused[stage] = True
        logger.info("demo stage %s: reusing %s", stage, folder)
        return False

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)

    started = time.perf_counter()
    details = build(folder)
    marker = {
        "stage": stage,
        "input_hash": input_hash,
        "seconds": round(time.perf_counter() - started, 2),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "details": details,
    }
    _write_json_atomic(folder / MARKER_NAME, marker)

    reused[stage] = False
    return True


def _marker_matches(folder: Path, input_hash: str) -> bool:
    marker = _read_json(folder / MARKER_NAME)
    return marker is not None and marker.get("input_hash") == input_hash


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_json_atomic(path: Path, payload: Any) -> None:
    staging = path.with_name(path.name + ".tmp")
    with open(staging, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, path)


def _build_tokenizer(folder: Path, *, train_texts: list[str], config: DemoConfig, progress: bool) -> dict[str, Any]:
    from spinal.demo.tokenizer import save_tokenizer, train_tokenizer

    with tqdm(total=1, desc="tokenizer", disable=not progress, unit="stage") as bar:
        tokenizer = train_tokenizer(
            train_texts, vocab_size=config.vocab_size, model_max_length=config.shape.max_positions
        )
        save_tokenizer(tokenizer, folder)
        bar.update(1)

    return {"vocab_size": len(tokenizer), "train_passages": len(train_texts)}


def _build_base(
    folder: Path, *, tokenizer_dir: Path, train_texts: list[str], config: DemoConfig, progress: bool
) -> dict[str, Any]:
    from transformers import PreTrainedTokenizerFast

    from spinal.demo.pretrain import build_model, pretrain, token_stream

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tokenizer_dir))
    model = build_model(config.shape, tokenizer, seed=config.seed)
    stream = token_stream(tokenizer, train_texts)

    with tqdm(total=config.pretrain.steps, desc="pretrain", disable=not progress, unit="step") as bar:

        def on_step(step: int, loss: float) -> None:
            bar.update(1)
            if step % 10 == 0 or step == config.pretrain.steps:
                bar.set_postfix(loss=f"{loss:.3f}")

        losses = pretrain(model, stream, config.pretrain, seed=config.seed, on_step=on_step)

    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    _write_json_atomic(folder / "pretrain_losses.json", losses)

    return {
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "train_tokens": int(stream.numel()),
        "final_loss": losses[-1],
    }


def _build_dpo(
    folder: Path, *, base_dir: Path, pairs: list[corpus.PreferencePair], config: DemoConfig, progress: bool
) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from spinal.demo.align import run_dpo

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(base_dir))
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)

    with open(folder / "pairs.jsonl", "w", encoding="utf-8") as handle:
        for pair in pairs:
            handle.write(json.dumps(asdict(pair)) + "\n")

    history = run_dpo(model, tokenizer, pairs, folder, config.dpo, seed=config.seed, progress=progress)
    _write_json_atomic(folder / "log_history.json", history)

    logged = [entry for entry in history if "rewards/accuracies" in entry]
    last = logged[-1] if logged else {}
    return {
        "pairs": len(pairs),
        "final_loss": last.get("loss"),
        "final_reward_accuracy": last.get("rewards/accuracies"),
        "final_reward_margin": last.get("rewards/margins"),
    }


def _checkpoint_epoch(folder: Path) -> float:
    state = _read_json(folder / "trainer_state.json") or {}
    return float(state.get("epoch") or 0.0)


def _trace_stage(
    root: Path,
    store: TraceStore,
    checkpoints: list[tuple[int, Path]],
    config: DemoConfig,
    *,
    progress: bool,
    force: bool,
) -> tuple[str, dict[int, str], bool]:
    """Trace the base model and every checkpoint as one series.

    Returns:
        (base run id, checkpoint run ids by step, whether any trace was computed in this call).
    """
    from spinal.adapters import load_model
    from spinal.engine import trace_loaded
    from spinal.errors import StoreError
    from spinal.fingerprint import fingerprint_directory

    record_path = root / "traces.json"
    if force:
        for run_id in (_read_json(record_path) or {}).get("run_ids", []):
            with contextlib.suppress(StoreError):
                store.delete(run_id)

    prompt_set = corpus.heldout_prompt_set().head(config.max_prompts)
    targets = [(0, root / "base", BASE_LABEL, 0.0)]
    targets += [(step, path, f"demo-dpo step {step}", _checkpoint_epoch(path)) for step, path in checkpoints]

    run_ids: dict[int, str] = {}
    computed_any = False
    for step, folder, label, epoch in tqdm(targets, desc="trace", disable=not progress, unit="model"):
        loaded = load_model(str(folder), device="cpu", dtype="float32")
        result = trace_loaded(
            loaded,
            prompt_set,
            store=store,
            settings=config.trace_settings,
            batch_size=config.trace_batch_size,
            label=label,
            series={"name": SERIES_NAME, "step": step, "epoch": epoch},
            fingerprint=fingerprint_directory(folder, cache_path=store.fingerprint_cache_path),
        )
        run_ids[step] = result.run_id
        computed_any = computed_any or not result.cached

    _write_json_atomic(record_path, {"run_ids": list(run_ids.values()), "store": str(store.root)})

    base_run_id = run_ids.pop(0)
    return base_run_id, run_ids, computed_any
