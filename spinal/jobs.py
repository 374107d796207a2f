"""Background trace jobs shared by every dashboard session in one process.

A job runs one trace request in a daemon thread. Jobs are keyed by the request key (a hash of
everything in the request except its label), so a second browser tab or user asking for the same
trace attaches to the running job instead of starting another. Progress lives in the job and is
polled by the dashboard, so it survives reruns and page switches.

At most ``max_running`` traces compute at once (one by default). The limit also protects loaded
models shared through ``ModelCache``: the logit lens hooks the model during a trace, so two traces
must not run on one model object at the same time.

This module imports neither torch nor Streamlit; the engine is imported inside the worker.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from spinal.errors import SpinalError
from spinal.settings import TraceSettings, canonical_hash

logger = logging.getLogger(__name__)

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
ProgressCallback = Callable[[str, int, int], None]

FINISHED_STATES: frozenset[str] = frozenset({"done", "failed", "cancelled"})


class JobCancelled(SpinalError):
    """The user cancelled a trace job before it finished."""


@dataclass(frozen=True)
class TraceRequest:
    """One trace as the user requested it, with every argument of ``spinal.engine.trace``.

    Attributes:
        source: Local checkpoint directory or hub id.
        prompts: Prompt file path or ``builtin:NAME``.
        store_root: Root folder of the trace store that receives the run.
        settings: ``TraceSettings.to_dict()`` of the trace settings.
        device: ``auto`` or a torch device string.
        dtype: ``auto``, ``float32``, ``float16`` or ``bfloat16``.
        batch_size: Prompts per forward pass.
        max_prompts: Use only the first this many prompts; None for all.
        revision: Hub revision for hub ids.
        trust_remote_code: Allow code shipped with the checkpoint to run.
        allow_pickle: Allow pickled ``.bin`` weights.
        label: Display name of the run; not part of the request key.
        prompts_name: Display name of the prompt source, such as an uploaded file's own name
            when ``prompts`` is its temporary copy. It is not part of the request key.
    """

    source: str
    prompts: str
    store_root: str
    settings: dict[str, Any] = field(default_factory=lambda: TraceSettings().to_dict())
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 8
    max_prompts: int | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False
    label: str | None = None
    prompts_name: str | None = None

    @property
    def key(self) -> str:
        """SHA-256 of the request without its display names: equal keys compute the same run."""
        payload = asdict(self)
        payload.pop("label")
        payload.pop("prompts_name")
        return canonical_hash(payload)

    def trace_settings(self) -> TraceSettings:
        """Return the settings as a validated ``TraceSettings``."""
        settings = TraceSettings.from_dict(self.settings)
        settings.validate()
        return settings


@dataclass(frozen=True)
class JobOutcome:
    """Result of a finished trace: the stored run and whether it was already in the store."""

    run_id: str
    cached: bool


@dataclass(frozen=True)
class JobSnapshot:
    """A consistent copy of a job's state for display.

    Attributes:
        key: Request key.
        request: The request.
        state: ``queued``, ``running``, ``done``, ``failed`` or ``cancelled``.
        stage: Last progress stage the engine reported (``load``, ``forward``, ``fit``,
            ``bootstrap``, ``write``), or ``""``.
        done: Steps done in ``stage``.
        total: Steps in ``stage``.
        run_id: Stored run id once done.
        cached: True when the run was already stored and nothing was computed.
        error: One-line error message once failed or cancelled.
        submitted: Submission time (``time.time()``).
        started: Start time of the computation, or None while queued.
        finished: End time, or None while unfinished.
        attached: Requests for this key after the first one (other tabs or users).
    """

    key: str
    request: TraceRequest
    state: JobState
    stage: str = ""
    done: int = 0
    total: int = 0
    run_id: str | None = None
    cached: bool = False
    error: str | None = None
    submitted: float = 0.0
    started: float | None = None
    finished: float | None = None
    attached: int = 0

    @property
    def fraction(self) -> float:
        """Progress of the current stage in [0, 1]; 1 once done."""
        if self.state == "done":
            return 1.0

        if self.total <= 0:
            return 0.0

        return min(1.0, max(0.0, self.done / self.total))

    @property
    def finished_ok(self) -> bool:
        """True when the job stored (or found) its run."""
        return self.state == "done"

    @property
    def is_active(self) -> bool:
        """True while queued or running."""
        return self.state not in FINISHED_STATES


TraceFunction = Callable[[TraceRequest, ProgressCallback], JobOutcome]
"""Computes a request, reporting progress(stage, done, total), and returns the outcome."""


class _Job:
    """Mutable job state guarded by the registry's lock."""

    def __init__(self, request: TraceRequest) -> None:
        self.snapshot = JobSnapshot(key=request.key, request=request, state="queued", submitted=time.time())
        self.cancel_requested = threading.Event()
        self.thread: threading.Thread | None = None


class JobRegistry:
    """Process-wide registry of trace jobs.

    Args:
        max_running: Traces that may compute at the same time; later jobs wait as ``queued``.
        keep_finished: Finished jobs kept for display; older ones are forgotten.
    """

    def __init__(self, max_running: int = 1, keep_finished: int = 50) -> None:
        if max_running < 1:
            raise ValueError(f"max_running={max_running} is invalid: use 1 or more.")

        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self._slots = threading.Semaphore(max_running)
        self._keep_finished = keep_finished

    def submit(self, request: TraceRequest, trace_fn: TraceFunction | None = None) -> tuple[JobSnapshot, bool]:
        """Start a job for ``request``, or attach to the job already computing or done for it.

        A failed or cancelled job with the same key is replaced by a new one, so a retry after a
        fix starts fresh.

        Args:
            request: What to trace.
            trace_fn: Function that computes the request; ``run_engine_trace`` when None.

        Returns:
            The job's snapshot and True when the request attached to an existing job.
        """
        function = trace_fn or run_engine_trace
        key = request.key
        with self._lock:
            existing = self._jobs.get(key)
            if existing is not None and existing.snapshot.state not in ("failed", "cancelled"):
                existing.snapshot = replace(existing.snapshot, attached=existing.snapshot.attached + 1)
                logger.info("request %s attached to job %s (%s)", request.source, key[:12], existing.snapshot.state)
                return existing.snapshot, True

            job = _Job(request)
            self._jobs[key] = job
            self._jobs.move_to_end(key)
            self._forget_old_jobs()

            job.thread = threading.Thread(
                target=self._run, args=(job, function), name=f"spinal-trace-{key[:8]}", daemon=True
            )
            job.thread.start()
            logger.info("started trace job %s for %s", key[:12], request.source)
            return job.snapshot, False

    def get(self, key: str) -> JobSnapshot | None:
        """Return the snapshot of the job with ``key``, or None when it is unknown."""
        with self._lock:
            job = self._jobs.get(key)
            return None if job is None else job.snapshot

    def snapshots(self) -> list[JobSnapshot]:
        """Return every known job, oldest submission first."""
        with self._lock:
            return [job.snapshot for job in self._jobs.values()]

    def active(self) -> list[JobSnapshot]:
        """Return the queued and running jobs."""
        return [snapshot for snapshot in self.snapshots() if snapshot.is_active]

    def cancel(self, key: str) -> bool:
        """Ask the job ``key`` to stop at its next progress report.

        Returns:
            True when the job exists and has not finished yet.
        """
        with self._lock:
            job = self._jobs.get(key)
            if job is None or not job.snapshot.is_active:
                return False

            job.cancel_requested.set()
            return True

    def clear_finished(self, store_root: str | None = None) -> int:
        """Forget done, failed and cancelled jobs; queued and running jobs are never removed.

        Args:
            store_root: Forget only jobs that write to this store; every store when None.

        Returns:
            Number of jobs removed.
        """
        with self._lock:
            doomed = [
                key
                for key, job in self._jobs.items()
                if not job.snapshot.is_active and (store_root is None or job.snapshot.request.store_root == store_root)
            ]
            for key in doomed:
                del self._jobs[key]

        logger.info("cleared %d finished trace job(s)", len(doomed))
        return len(doomed)

    def wait(self, key: str, timeout: float | None = None) -> JobSnapshot | None:
        """Block until the job ``key`` finishes or ``timeout`` seconds pass; return its snapshot."""
        with self._lock:
            job = self._jobs.get(key)

        if job is not None and job.thread is not None:
            job.thread.join(timeout)

        return self.get(key)

    def _forget_old_jobs(self) -> None:
        finished = [key for key, job in self._jobs.items() if not job.snapshot.is_active]
        for key in finished[: max(0, len(finished) - self._keep_finished)]:
            del self._jobs[key]

    def _update(self, job: _Job, **changes: Any) -> None:
        with self._lock:
            job.snapshot = replace(job.snapshot, **changes)

    def _run(self, job: _Job, trace_fn: TraceFunction) -> None:
        key = job.snapshot.key

        def progress(stage: str, done: int, total: int) -> None:
            if job.cancel_requested.is_set():
                raise JobCancelled(f"trace of {job.snapshot.request.source} was cancelled.")

            self._update(job, stage=stage, done=int(done), total=int(total))

        with self._slots:
            if job.cancel_requested.is_set():
                self._update(job, state="cancelled", error="cancelled before it started.", finished=time.time())
                return

            self._update(job, state="running", started=time.time())
            try:
                outcome = trace_fn(job.snapshot.request, progress)
            except JobCancelled as error:
                logger.info("trace job %s cancelled", key[:12])
                self._update(job, state="cancelled", error=str(error), finished=time.time())
            except SpinalError as error:
                logger.warning("trace job %s failed: %s", key[:12], error)
                self._update(job, state="failed", error=str(error), finished=time.time())
            except Exception as error:
                # A worker thread must record every failure, or the page would poll a dead job forever.
                logger.exception("trace job %s failed unexpectedly", key[:12])
                message = f"trace failed unexpectedly ({type(error).__name__}: {error}); the server log has the traceback."
                self._update(job, state="failed", error=message, finished=time.time())
            else:
                logger.info("trace job %s finished: run %s (cached=%s)", key[:12], outcome.run_id, outcome.cached)
                self._update(
                    job, state="done", run_id=outcome.run_id, cached=outcome.cached, finished=time.time()
                )


class ModelCache:
    """Loaded models kept in memory between traces, at most ``max_models`` at a time.

    The least recently used model is dropped when a new one would exceed the limit. Models are
    keyed by their load arguments, so one checkpoint in two dtypes counts twice.

    Args:
        max_models: Models kept resident.
    """

    def __init__(self, max_models: int = 2) -> None:
        if max_models < 1:
            raise ValueError(f"max_models={max_models} is invalid: use 1 or more.")

        self.max_models = max_models
        self._lock = threading.Lock()
        self._models: OrderedDict[tuple[Any, ...], Any] = OrderedDict()

    def get(self, load_args: dict[str, Any], loader: Callable[..., Any]) -> Any:
        """Return the model loaded with ``load_args``, loading it with ``loader(**load_args)`` if needed."""
        key = tuple(sorted(load_args.items()))
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]

        # Loading happens outside the lock so the dashboard can list models meanwhile. The job
        # registry runs one trace at a time, so one model loads at a time.
        model = loader(**load_args)
        with self._lock:
            self._models[key] = model
            self._models.move_to_end(key)
            while len(self._models) > self.max_models:
                evicted, _ = self._models.popitem(last=False)
                logger.info("unloaded model %s (more than %d resident)", dict(evicted).get("source"), self.max_models)

        return model

    def resident(self) -> list[dict[str, Any]]:
        """Return the load arguments of the resident models, least recently used first."""
        with self._lock:
            return [dict(key) for key in self._models]

    def unload(self, load_args: dict[str, Any] | None = None) -> int:
        """Drop one model (by its load arguments) or all models, and free their memory.

        Returns:
            Number of models dropped.
        """
        with self._lock:
            if load_args is None:
                count = len(self._models)
                self._models.clear()
            else:
                count = 1 if self._models.pop(tuple(sorted(load_args.items())), None) is not None else 0

        _free_memory()
        logger.info("unloaded %d model(s)", count)
        return count


def _free_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_engine_trace(request: TraceRequest, progress: ProgressCallback, models: ModelCache | None = None) -> JobOutcome:
    """Compute ``request`` with ``spinal.engine.trace`` and return the stored run.

    With ``models``, the engine loads checkpoints through that cache, so a model traced twice
    with other settings is loaded once. A repeated request finds its run through the store's
    request alias and loads no model at all.

    Raises:
        SpinalError: Any engine error, unchanged.
    """
    from spinal import engine
    from spinal.adapters import load_model
    from spinal.store import TraceStore

    loader = None
    if models is not None:

        def loader(source: str, **options: Any) -> Any:
            return models.get({"source": source, **options}, load_model)

    result = engine.trace(
        request.source,
        request.prompts,
        store=TraceStore(request.store_root),
        settings=request.trace_settings(),
        device=request.device,
        dtype=request.dtype,
        batch_size=request.batch_size,
        max_prompts=request.max_prompts,
        revision=request.revision,
        trust_remote_code=request.trust_remote_code,
        allow_pickle=request.allow_pickle,
        label=request.label,
        progress=progress,
        loader=loader,
    )
    return JobOutcome(result.run_id, result.cached)


REGISTRY = JobRegistry()
"""The registry every dashboard session in this process shares."""
