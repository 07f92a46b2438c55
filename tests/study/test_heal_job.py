"""Healing as a background job on a tiny model: its status as it trains, Stop then resume, errors kept, the
estimate before it starts, and that looking the adapters up never trains."""

from __future__ import annotations

import threading

import pytest
from helpers.tiny_models import tiny_bert_loaded, tiny_loaded

import core.study.healing as healing
from core.cache import ResultCache
from core.errors import UserError
from core.study import heal_job
from core.study.heal_job import HealJob, cached_heal, estimate_heal, recorded_step_seconds, timed_heal
from core.study.healing import HealConfig, cached_steps, heal
from core.task.data import dataset_from_rows
from core.task.prompts import PromptConfig
from core.task.setup import Setup

TEXTS = [("the film is good", "positive"), ("a bad and boring movie, long and tedious", "negative"),
         ("I loved it", "positive"), ("terrible plot, awful dialogue", "negative")]
ROWS = [{"text": f"{t} {i}", "label": lab} for i in range(30) for t, lab in TEXTS]
DROP = (1, 2)
CONFIG = HealConfig(steps=6, batch_size=4, seq_len=16, lr=1e-2)


def _setup(cache: bool = True) -> Setup:
    return Setup(tiny_loaded("llama"), dataset_from_rows(ROWS, "tiny"), PromptConfig(style="few-shot"),
                 cache=ResultCache() if cache else None)


def test_a_job_trains_reports_each_step_and_ends_with_the_adapters(fresh_results, monkeypatch) -> None:
    setup = _setup()
    seen = []
    real = heal_job.heal

    def watched(*args, progress=None, **kwargs):
        def step(s):
            progress(s)
            seen.append((s.step, job.step, job.status()))
        return real(*args, progress=step, **kwargs)

    monkeypatch.setattr(heal_job, "heal", watched)
    job = HealJob(setup, DROP, CONFIG)
    assert job.status().startswith("preparing") and job.step == 0
    job.start()
    assert job.wait(120) and job.error is None and not job.running and job.complete
    monkeypatch.setattr(heal_job, "heal", real)
    assert [s for s, _, _ in seen] == [1, 2, 3, 4, 5, 6] and all(a == b for a, b, _ in seen)
    assert seen[0][2].startswith("step 1 of 6, loss ") and "left" in seen[0][2] and "s per step so far" in seen[0][2]
    assert "left" not in seen[-1][2]  # the last step has nothing left
    assert job.result.steps_done == 6 and len(job.result.losses) == 6
    assert job.status().startswith("done: 6 steps, trained in")
    assert cached_steps(setup, DROP, CONFIG) == 6 and job.for_request(setup, DROP, CONFIG)
    assert not job.for_request(setup, (1,), CONFIG)
    # the finished adapters are the cache's: a second job reads them
    again = HealJob(setup, DROP, CONFIG).start()
    assert again.wait(60) and again.result.cached and again.status() == "done: 6 steps, read from the cache"


def test_stop_ends_after_the_current_step_keeps_the_checkpoint_and_a_new_job_resumes(fresh_results,
                                                                                     monkeypatch) -> None:
    setup = _setup()
    held, release = threading.Event(), threading.Event()
    real = heal_job.heal

    def slow(*args, progress=None, **kwargs):  # holds step 2's report until the test has pressed Stop
        def step(s):
            progress(s)
            if s.step == 2:
                held.set()
                release.wait(30)
        return real(*args, progress=step, **kwargs)

    monkeypatch.setattr(heal_job, "heal", slow)
    job = HealJob(setup, DROP, CONFIG).start()
    assert held.wait(60)
    job.stop()
    release.set()
    assert job.wait(60)
    monkeypatch.setattr(heal_job, "heal", real)
    assert job.stopped and not job.complete and job.error is None and job.step == 2
    assert job.status() == "stopped at step 2 of 6: the checkpoint is kept, starting again resumes there"
    assert cached_steps(setup, DROP, CONFIG) == 2
    assert estimate_heal(setup, DROP, CONFIG).cached == 2
    resumed = HealJob(setup, DROP, CONFIG)
    assert resumed.first_step == 2
    resumed.start()
    assert resumed.wait(120) and resumed.complete and resumed.result.resumed_from == 2
    straight = heal(_setup(cache=False), DROP, CONFIG)
    assert resumed.result.losses == pytest.approx(straight.losses, abs=1e-6)


def test_a_failing_job_keeps_its_error_as_a_sentence(fresh_results, monkeypatch) -> None:
    setup = _setup()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(heal_job, "heal", broken)
    job = HealJob(setup, DROP, CONFIG).start()
    assert job.wait(30) and job.error == "RuntimeError: disk full" and not job.complete
    assert job.status() == "failed at step 0 of 6: RuntimeError: disk full"

    def refused(*args, **kwargs):
        raise UserError("6 steps of 4 rows need 384 tokens")

    monkeypatch.setattr(heal_job, "heal", refused)
    job = HealJob(setup, DROP, CONFIG).start()
    assert job.wait(30) and job.error == "6 steps of 4 rows need 384 tokens"


def test_a_job_refuses_what_healing_cannot_do_before_it_starts(fresh_results) -> None:
    setup = _setup()
    with pytest.raises(UserError, match="drop at least one attention layer"):
        HealJob(setup, (), CONFIG)
    with pytest.raises(UserError, match="steps must be a whole number"):
        HealJob(setup, DROP, HealConfig(steps=0))
    encoder = Setup(tiny_bert_loaded(), dataset_from_rows(ROWS, "tiny"), cache=ResultCache())
    with pytest.raises(UserError, match="encoder classifier"):
        HealJob(encoder, DROP, CONFIG)
    with pytest.raises(UserError, match="encoder classifier"):
        heal_job.require_causal(encoder)


def test_the_estimate_is_the_steps_left_times_the_recorded_median_pace(fresh_results) -> None:
    setup = _setup()
    first = estimate_heal(setup, DROP, CONFIG)
    assert (first.steps, first.cached, first.to_train, first.seconds) == (6, 0, 6, None)
    assert "no healing run has been timed" in first.basis and "6 steps to train" in first.text()
    paces = []
    for drop in ((1,), (2,), (1, 3)):
        timed_heal(setup, drop, CONFIG)
        paces.append(recorded_step_seconds(setup, CONFIG)[-1])
    assert recorded_step_seconds(setup, CONFIG) == paces and all(p > 0 for p in paces)
    e = estimate_heal(setup, DROP, CONFIG)  # another mask, the same settings: their pace
    assert e.per_step == pytest.approx(sorted(paces)[1]) and e.seconds == pytest.approx(6 * sorted(paces)[1])
    assert "median of the last 3 runs" in e.basis and "about" in e.text()
    # a cache hit trains nothing and is not timed
    timed_heal(setup, (1,), CONFIG)
    assert recorded_step_seconds(setup, CONFIG) == paces
    done = estimate_heal(setup, (1,), CONFIG)
    assert done.to_train == 0 and done.seconds == 0 and done.text().startswith("all 6 steps are cached")
    # other settings have their own pace
    other = HealConfig(steps=6, batch_size=2, seq_len=16, lr=1e-2)
    assert estimate_heal(setup, DROP, other).per_step is None


def test_looking_the_adapters_up_never_trains(fresh_results, monkeypatch) -> None:
    setup = _setup()
    real = healing._train
    monkeypatch.setattr(healing, "_train", lambda *a, **k: pytest.fail("trained on a look-up"))
    assert cached_heal(setup, DROP, CONFIG) is None
    assert cached_heal(_setup(cache=False), DROP, CONFIG) is None
    monkeypatch.setattr(healing, "_train", real)
    trained = heal(setup, DROP, CONFIG)
    monkeypatch.setattr(healing, "_train", lambda *a, **k: pytest.fail("trained on a look-up"))
    found = cached_heal(setup, DROP, CONFIG)
    assert found is not None and found.cached and found.key == trained.key and found.losses == trained.losses
