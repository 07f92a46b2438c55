"""Sweeps in the background and their estimates, on a tiny model: status lines, Stop, resume, the estimate."""

from __future__ import annotations

import threading

import pytest
from helpers.tiny_models import tiny_loaded

from core.cache import ResultCache
from core.errors import UserError
from core.study import jobs
from core.study.jobs import SweepJob
from core.study.strategies import QUICK, StrategyConfig, ranking
from core.study.sweep import PointConfig, estimate_sweep, sweep
from core.task.data import dataset_from_rows
from core.task.evaluation import EvalConfig, evaluate
from core.task.prompts import PromptConfig
from core.task.setup import Setup

ROWS = [{"text": t, "label": lab} for t, lab in [
    ("the film is good", "positive"), ("a bad and boring movie", "negative"), ("I loved it", "positive"),
    ("terrible plot, awful dialogue", "negative"), ("wonderful acting", "positive"), ("bad", "negative"),
]] * 5
ORDER = [2, 0, 3, 1]


def _setup(cache: ResultCache) -> Setup:
    return Setup(tiny_loaded("llama"), dataset_from_rows(ROWS, "tiny"), PromptConfig(style="zero-shot"), cache=cache)


CONFIG = PointConfig(eval=EvalConfig(n=6, val_n=0))


def test_a_job_runs_the_sweep_with_a_status_line_per_mask(tmp_path) -> None:
    setup = _setup(ResultCache(tmp_path))
    job = SweepJob(setup, StrategyConfig("first-to-last"), 2, CONFIG, latency=False).start()
    assert job.wait(120) and job.error is None and not job.running
    status = job.status()
    assert list(status["mask"]) == ["none", "0", "0,1"] and set(status["status"]) == {"computed"}
    assert (status["seconds"] >= 0).all()
    expected = sweep(setup, [0, 1, 2, 3], 2, CONFIG, latency=False)
    assert job.table()[["layers", "accuracy", "ece"]].equals(expected[["layers", "accuracy", "ece"]])
    # a second run finds every mask in the cache
    again = SweepJob(setup, StrategyConfig("first-to-last"), 2, CONFIG, latency=False).start()
    assert again.wait(120) and set(again.status()["status"]) == {"from the cache"}


def test_stop_ends_a_job_at_the_next_batch_and_a_rerun_resumes(tmp_path, monkeypatch) -> None:
    setup = _setup(ResultCache(tmp_path))
    gate, second = threading.Event(), threading.Event()
    real = jobs.sweep_steps

    def slow_steps(*args, **kwargs):  # holds the second mask's first progress report until the test has stopped
        progress = kwargs["progress"]

        def held(what: str, done: float, total: int) -> None:
            if what.startswith("1 of"):
                second.set()
                gate.wait(30)
            progress(what, done, total)
        yield from real(*args, **{**kwargs, "progress": held})

    monkeypatch.setattr(jobs, "sweep_steps", slow_steps)
    job = SweepJob(setup, StrategyConfig("first-to-last"), 3, CONFIG, latency=False, order=ORDER).start()
    assert second.wait(60)
    job.stop()
    gate.set()
    assert job.wait(60) and job.stopped and job.error is None
    assert list(job.status()["status"]) == ["computed", "stopped", "stopped", "stopped"]
    assert len(job.table()) == 1
    estimate = estimate_sweep(setup, ORDER, 3, CONFIG)
    assert estimate.cached == [True, False, False, False] and estimate.to_compute == 3
    monkeypatch.setattr(jobs, "sweep_steps", real)
    resumed = SweepJob(setup, StrategyConfig("first-to-last"), 3, CONFIG, latency=False, order=ORDER).start()
    assert resumed.wait(120)
    assert list(resumed.status()["status"]) == ["from the cache", "computed", "computed", "computed"]


def test_a_failing_job_says_why_and_keeps_what_it_did(tmp_path, monkeypatch) -> None:
    setup = _setup(ResultCache(tmp_path))
    real = jobs.sweep_steps

    def failing(*args, **kwargs):
        steps = real(*args, **kwargs)
        yield next(steps)
        raise RuntimeError("disk full")

    monkeypatch.setattr(jobs, "sweep_steps", failing)
    job = SweepJob(setup, StrategyConfig("first-to-last"), 2, CONFIG, latency=False).start()
    assert job.wait(60) and job.error == "RuntimeError: disk full"
    assert list(job.status()["status"]) == ["computed", "failed", "failed"] and len(job.table()) == 1


def test_a_job_refuses_a_bad_request(tmp_path) -> None:
    setup = _setup(ResultCache(tmp_path))
    with pytest.raises(UserError, match="between 0 and 4"):
        SweepJob(setup, StrategyConfig(), 5, CONFIG)
    with pytest.raises(UserError, match="unknown strategy"):
        SweepJob(setup, StrategyConfig("best"), 2, CONFIG)


def test_the_estimate_counts_cached_masks_and_times_the_rest_from_the_last_points(tmp_path) -> None:
    setup = _setup(ResultCache(tmp_path))
    first = estimate_sweep(setup, ORDER, 2, CONFIG)
    assert first.masks == ["none", "2", "0,2"] and first.cached == [False] * 3 and first.seconds is None
    assert "no mask has been computed" in first.basis
    table = sweep(setup, ORDER, 1, CONFIG, latency=False)
    e = estimate_sweep(setup, ORDER, 3, CONFIG)
    assert e.cached == [True, True, False, False] and e.to_compute == 2
    per = sorted(table["seconds"])[len(table) // 2] if len(table) % 2 else sum(table["seconds"]) / 2
    assert e.seconds == pytest.approx(2 * per, rel=1e-6) and "median of the last 2" in e.basis
    # a greedy strategy's masks are not known before its search
    greedy = estimate_sweep(setup, None, 3, CONFIG)
    assert greedy.masks == [] and greedy.seconds == pytest.approx(4 * per, rel=1e-6)
    # another context (another sample size) has its own masks and times
    other = PointConfig(eval=EvalConfig(n=4, val_n=0))
    assert estimate_sweep(setup, ORDER, 1, other).cached == [False, False]


def test_a_mask_already_scored_elsewhere_counts_as_cached_and_is_not_timed(tmp_path) -> None:
    setup = _setup(ResultCache(tmp_path))
    evaluate(setup, EvalConfig(n=6, val_n=0, drop=(0, 2)))  # e.g. prefetched, or shown on the Calibration view
    assert estimate_sweep(setup, ORDER, 2, CONFIG).cached == [False, False, True]
    sweep(setup, ORDER, 2, CONFIG, latency=False)
    # the two masks computed here were timed; the one whose scores were cached took no time worth keeping
    assert "median of the last 2" in estimate_sweep(setup, ORDER, 3, CONFIG).basis


def test_the_picker_ranks_by_any_quick_strategy(tmp_path) -> None:
    setup = _setup(ResultCache(tmp_path))
    for name in QUICK:
        order, scores = ranking(setup, name)
        assert sorted(order) == [0, 1, 2, 3], name
        if scores is not None:  # a score-based order: lowest score first
            assert [scores[i] for i in order] == sorted(scores), name
    assert ranking(setup, "last-to-first") == ([3, 2, 1, 0], None)
    with pytest.raises(UserError, match="evaluates masks"):
        ranking(setup, "greedy-divergence")
