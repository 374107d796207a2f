"""Tests of spinal.jobs: the shared job registry, progress, attach, errors, cancel and the model cache."""

from __future__ import annotations

import threading

import pytest

from spinal.errors import PromptSetError, SettingsError
from spinal.jobs import (
    JobOutcome,
    JobRegistry,
    ModelCache,
    TraceRequest,
    run_engine_trace,
)
from spinal.settings import BootstrapSettings, TokenSettings, TraceSettings

WAIT_S = 10.0


def _request(tmp_path, **changes) -> TraceRequest:
    fields = {"source": "models/tiny", "prompts": "builtin:pydoc-topics", "store_root": str(tmp_path)}
    fields.update(changes)
    return TraceRequest(**fields)


class BlockingTrace:
    """Fake trace function that reports progress and waits until released."""

    def __init__(self, run_id: str = "0123456789abcdef") -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.calls = 0
        self.run_id = run_id

    def __call__(self, request, progress):
        self.calls += 1
        progress("forward", 1, 4)
        self.started.set()
        assert self.release.wait(WAIT_S), "test never released the fake trace"
        progress("forward", 4, 4)
        return JobOutcome(self.run_id, cached=False)


def test_request_key_ignores_label(tmp_path):
    assert _request(tmp_path, label="a").key == _request(tmp_path, label="b").key


def test_request_key_depends_on_store(tmp_path):
    assert _request(tmp_path).key != _request(tmp_path / "other").key


def test_request_key_depends_on_settings(tmp_path):
    other = TraceSettings(tokens=TokenSettings(positions="all")).to_dict()
    assert _request(tmp_path).key != _request(tmp_path, settings=other).key


def test_request_invalid_settings_rejected(tmp_path):
    settings = TraceSettings(bootstrap=BootstrapSettings(groups=1)).to_dict()
    with pytest.raises(SettingsError, match="groups=1"):
        _request(tmp_path, settings=settings).trace_settings()


def test_job_finishes_with_run(tmp_path):
    registry = JobRegistry()
    snapshot, _ = registry.submit(_request(tmp_path), lambda request, progress: JobOutcome("feedfacefeedface", True))
    done = registry.wait(snapshot.key, WAIT_S)
    assert (done.state, done.run_id, done.cached) == ("done", "feedfacefeedface", True)


def test_job_done_fraction_is_one(tmp_path):
    registry = JobRegistry()
    snapshot, _ = registry.submit(_request(tmp_path), lambda request, progress: JobOutcome("feedfacefeedface", False))
    assert registry.wait(snapshot.key, WAIT_S).fraction == 1.0


def test_job_reports_progress(tmp_path):
    registry = JobRegistry()
    fake = BlockingTrace()
    snapshot, _ = registry.submit(_request(tmp_path), fake)
    fake.started.wait(WAIT_S)
    running = registry.get(snapshot.key)
    fake.release.set()
    registry.wait(snapshot.key, WAIT_S)
    assert (running.state, running.stage, running.done, running.total) == ("running", "forward", 1, 4)


def test_same_request_attaches(tmp_path):
    registry = JobRegistry()
    fake = BlockingTrace()
    first, _ = registry.submit(_request(tmp_path), fake)
    fake.started.wait(WAIT_S)
    second, attached = registry.submit(_request(tmp_path, label="second tab"), fake)
    fake.release.set()
    registry.wait(first.key, WAIT_S)
    assert attached
    assert second.key == first.key


def test_attached_request_computes_once(tmp_path):
    registry = JobRegistry()
    fake = BlockingTrace()
    first, _ = registry.submit(_request(tmp_path), fake)
    fake.started.wait(WAIT_S)
    registry.submit(_request(tmp_path), fake)
    fake.release.set()
    registry.wait(first.key, WAIT_S)
    assert fake.calls == 1


def test_attach_count_recorded(tmp_path):
    registry = JobRegistry()
    fake = BlockingTrace()
    first, _ = registry.submit(_request(tmp_path), fake)
    registry.submit(_request(tmp_path), fake)
    fake.release.set()
    assert registry.wait(first.key, WAIT_S).attached == 1


def test_done_request_attaches(tmp_path):
    registry = JobRegistry()
    calls = []
    function = lambda request, progress: calls.append(1) or JobOutcome("feedfacefeedface", False)
    first, _ = registry.submit(_request(tmp_path), function)
    registry.wait(first.key, WAIT_S)
    _, attached = registry.submit(_request(tmp_path), function)
    assert attached
    assert len(calls) == 1


def test_spinal_error_becomes_message(tmp_path):
    registry = JobRegistry()

    def failing(request, progress):
        raise PromptSetError("prompt file not found: /missing.txt")

    snapshot, _ = registry.submit(_request(tmp_path), failing)
    failed = registry.wait(snapshot.key, WAIT_S)
    assert (failed.state, failed.error) == ("failed", "prompt file not found: /missing.txt")


def test_unexpected_error_becomes_message(tmp_path):
    registry = JobRegistry()

    def crashing(request, progress):
        raise RuntimeError("boom")

    snapshot, _ = registry.submit(_request(tmp_path), crashing)
    failed = registry.wait(snapshot.key, WAIT_S)
    assert failed.error.startswith("trace failed unexpectedly (RuntimeError: boom)")


def test_failed_job_restarts_on_resubmit(tmp_path):
    registry = JobRegistry()

    def failing(request, progress):
        raise PromptSetError("bad prompts")

    first, _ = registry.submit(_request(tmp_path), failing)
    registry.wait(first.key, WAIT_S)
    second, attached = registry.submit(_request(tmp_path), lambda request, progress: JobOutcome("feedfacefeedface", False))
    assert not attached
    assert registry.wait(second.key, WAIT_S).state == "done"


def test_cancel_stops_at_next_progress(tmp_path):
    registry = JobRegistry()
    fake = BlockingTrace()
    snapshot, _ = registry.submit(_request(tmp_path), fake)
    fake.started.wait(WAIT_S)
    assert registry.cancel(snapshot.key)
    fake.release.set()
    assert registry.wait(snapshot.key, WAIT_S).state == "cancelled"


def test_cancel_finished_job_is_noop(tmp_path):
    registry = JobRegistry()
    snapshot, _ = registry.submit(_request(tmp_path), lambda request, progress: JobOutcome("feedfacefeedface", False))
    registry.wait(snapshot.key, WAIT_S)
    assert not registry.cancel(snapshot.key)


def test_second_job_waits_for_slot(tmp_path):
    registry = JobRegistry(max_running=1)
    fake = BlockingTrace()
    first, _ = registry.submit(_request(tmp_path), fake)
    fake.started.wait(WAIT_S)
    second, _ = registry.submit(_request(tmp_path, source="models/other"), lambda request, progress: JobOutcome("feedfacefeedface", False))
    queued = registry.get(second.key)
    fake.release.set()
    registry.wait(first.key, WAIT_S)
    registry.wait(second.key, WAIT_S)
    assert queued.state == "queued"


def test_active_lists_running_jobs(tmp_path):
    registry = JobRegistry()
    fake = BlockingTrace()
    snapshot, _ = registry.submit(_request(tmp_path), fake)
    fake.started.wait(WAIT_S)
    active = [job.key for job in registry.active()]
    fake.release.set()
    registry.wait(snapshot.key, WAIT_S)
    assert active == [snapshot.key]


def test_registry_forgets_old_finished_jobs(tmp_path):
    registry = JobRegistry(keep_finished=2)
    for index in range(4):
        snapshot, _ = registry.submit(_request(tmp_path, source=f"models/{index}"), lambda request, progress: JobOutcome("feedfacefeedface", False))
        registry.wait(snapshot.key, WAIT_S)

    assert len(registry.snapshots()) <= 3


def test_request_key_ignores_prompts_name(tmp_path):
    assert _request(tmp_path, prompts_name="a.txt").key == _request(tmp_path, prompts_name="b.txt").key


def test_clear_finished_keeps_running(tmp_path):
    registry = JobRegistry(max_running=2)
    done, _ = registry.submit(_request(tmp_path, source="models/done"), lambda request, progress: JobOutcome("feedfacefeedface", False))
    registry.wait(done.key, WAIT_S)
    fake = BlockingTrace()
    running, _ = registry.submit(_request(tmp_path, source="models/running"), fake)
    fake.started.wait(WAIT_S)
    removed = registry.clear_finished()
    remaining = [snapshot.key for snapshot in registry.snapshots()]
    fake.release.set()
    registry.wait(running.key, WAIT_S)
    assert removed == 1
    assert remaining == [running.key]


def test_clear_finished_other_store_kept(tmp_path):
    registry = JobRegistry()
    for root in (tmp_path / "a", tmp_path / "b"):
        snapshot, _ = registry.submit(_request(root), lambda request, progress: JobOutcome("feedfacefeedface", False))
        registry.wait(snapshot.key, WAIT_S)

    assert registry.clear_finished(str(tmp_path / "a")) == 1
    assert [snapshot.request.store_root for snapshot in registry.snapshots()] == [str(tmp_path / "b")]


def test_registry_rejects_zero_workers():
    with pytest.raises(ValueError, match="max_running=0"):
        JobRegistry(max_running=0)


def test_model_cache_reuses_model():
    cache = ModelCache()
    loads = []
    loader = lambda **kwargs: loads.append(kwargs) or object()
    first = cache.get({"source": "a"}, loader)
    second = cache.get({"source": "a"}, loader)
    assert first is second
    assert len(loads) == 1


def test_model_cache_keeps_two():
    cache = ModelCache(max_models=2)
    for source in ("a", "b", "c"):
        cache.get({"source": source}, lambda **kwargs: object())

    assert [entry["source"] for entry in cache.resident()] == ["b", "c"]


def test_model_cache_evicts_least_recent():
    cache = ModelCache(max_models=2)
    cache.get({"source": "a"}, lambda **kwargs: object())
    cache.get({"source": "b"}, lambda **kwargs: object())
    cache.get({"source": "a"}, lambda **kwargs: object())
    cache.get({"source": "c"}, lambda **kwargs: object())
    assert [entry["source"] for entry in cache.resident()] == ["a", "c"]


def test_model_cache_unload_one():
    cache = ModelCache()
    cache.get({"source": "a"}, lambda **kwargs: object())
    cache.get({"source": "b"}, lambda **kwargs: object())
    assert cache.unload({"source": "a"}) == 1
    assert [entry["source"] for entry in cache.resident()] == ["b"]


def test_model_cache_unload_all():
    cache = ModelCache()
    cache.get({"source": "a"}, lambda **kwargs: object())
    cache.unload()
    assert cache.resident() == []


@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory):
    from tiny_models import save_tiny

    path = tmp_path_factory.mktemp("models") / "tiny-llama"
    save_tiny("llama", path)
    return path


@pytest.fixture()
def prompt_file(tmp_path):
    path = tmp_path / "prompts.txt"
    lines = [f"prompt number {index} with a few more words to trace" for index in range(8)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


FAST_SETTINGS = TraceSettings(bootstrap=BootstrapSettings(replicates=10, groups=4), tokens=TokenSettings(positions="all"))


def test_engine_trace_stores_run(saved_llama, prompt_file, tmp_path):
    from spinal.store import TraceStore

    request = TraceRequest(str(saved_llama), str(prompt_file), str(tmp_path / "store"), FAST_SETTINGS.to_dict())
    outcome = run_engine_trace(request, lambda stage, done, total: None)
    assert TraceStore(tmp_path / "store").get(outcome.run_id).layers["layer"].tolist() == [0, 1, 2]


def test_cached_model_trace_matches_engine(saved_llama, prompt_file, tmp_path):
    engine_request = TraceRequest(str(saved_llama), str(prompt_file), str(tmp_path / "engine"), FAST_SETTINGS.to_dict())
    cached_request = TraceRequest(str(saved_llama), str(prompt_file), str(tmp_path / "cached"), FAST_SETTINGS.to_dict())
    engine_outcome = run_engine_trace(engine_request, lambda stage, done, total: None)
    cached_outcome = run_engine_trace(cached_request, lambda stage, done, total: None, models=ModelCache())
    assert cached_outcome.run_id == engine_outcome.run_id


def test_cached_model_second_request_skips_load(saved_llama, prompt_file, tmp_path):
    request = TraceRequest(str(saved_llama), str(prompt_file), str(tmp_path / "store"), FAST_SETTINGS.to_dict())
    run_engine_trace(request, lambda stage, done, total: None, models=ModelCache())

    def fail_load(**kwargs):
        raise AssertionError("the model was loaded for a stored request")

    cache = ModelCache()
    cache.get = lambda load_args, loader: fail_load(**load_args)
    assert run_engine_trace(request, lambda stage, done, total: None, models=cache).cached


def test_cached_model_progress_reports_load(saved_llama, prompt_file, tmp_path):
    request = TraceRequest(str(saved_llama), str(prompt_file), str(tmp_path / "store"), FAST_SETTINGS.to_dict())
    stages = []
    run_engine_trace(request, lambda stage, done, total: stages.append(stage), models=ModelCache())
    assert stages[0] == "load"
    assert "write" in stages


def test_engine_error_is_spinal_error(prompt_file, tmp_path):
    from spinal.errors import SpinalError

    request = TraceRequest(str(tmp_path / "missing-model"), str(prompt_file), str(tmp_path / "store"))
    with pytest.raises(SpinalError, match="not found"):
        run_engine_trace(request, lambda stage, done, total: None)


def test_cached_model_loaded_once_across_settings(saved_llama, prompt_file, tmp_path):
    from spinal.settings import TokenSettings, TraceSettings

    other = TraceSettings(bootstrap=FAST_SETTINGS.bootstrap, tokens=TokenSettings(positions="all"))
    cache = ModelCache()
    loads = []
    original_get = cache.get

    def counting_get(load_args, loader):
        return original_get(load_args, lambda **kwargs: loads.append(kwargs) or loader(**kwargs))

    cache.get = counting_get
    for settings in (FAST_SETTINGS, other):
        request = TraceRequest(str(saved_llama), str(prompt_file), str(tmp_path / "store"), settings.to_dict())
        run_engine_trace(request, lambda stage, done, total: None, models=cache)

    assert len(loads) == 1
