"""Prefetching likely next masks in the background: what is wanted, pausing for the foreground, cancelling."""

from __future__ import annotations

import threading
import time

import pytest
from helpers.tiny_models import tiny_loaded

from core.cache import ResultCache
from core.study import prefetch
from core.study.prefetch import Prefetcher, likely_next
from core.task.data import dataset_from_rows
from core.task.evaluation import EvalConfig, evaluate, is_cached
from core.task.prompts import PromptConfig
from core.task.setup import Setup

ROWS = [{"text": f"{t} {i}", "label": lab} for i in range(5) for t, lab in [
    ("the film is good", "positive"), ("a bad and boring movie", "negative"), ("I loved it", "positive"),
    ("terrible", "negative")]]
CONFIG = EvalConfig(n=6, val_n=0)


def _setup(tmp_path) -> Setup:
    return Setup(tiny_loaded("llama"), dataset_from_rows(ROWS, "tiny"), PromptConfig(style="zero-shot"),
                 cache=ResultCache(tmp_path))


def _until(condition, timeout: float = 60) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_likely_next_masks_are_drop_k_then_each_remaining_layer_in_importance_order() -> None:
    assert likely_next([3, 1, 0, 2], (1,), 2) == [(1, 3), (0, 1), (1, 2)]
    assert likely_next([3, 1, 0, 2], (), None, limit=2) == [(3,), (1,)]
    assert likely_next([3, 1, 0, 2], (1, 3), 2) == [(0, 1, 3), (1, 2, 3)]  # drop-k is the current mask
    assert likely_next([1, 0], (1,), None) == []  # dropping every layer is not a likely next step


def test_likely_next_takes_as_many_masks_as_its_budget_of_forward_passes_pays_for() -> None:
    order = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]  # 10 layers: adding layer L costs (10 - L) / 10 of a pass
    assert likely_next(order, (), None, budget=0.3) == [(9,), (8,)]  # 0.1 + 0.2; layer 7 would make 0.6
    assert likely_next(order, (), None, budget=1.5) == [(9,), (8,), (7,), (6,), (5,)]  # 0.1 + ... + 0.5
    assert likely_next(order, (), None, budget=100, limit=3) == [(9,), (8,), (7,)]
    # from the current mask (9), "drop the 3 most redundant" first differs at layer 7: 0.3 of a pass
    assert likely_next(order, (9,), 3, budget=0.5) == [(7, 8, 9), (8, 9)]


def test_wanted_masks_are_evaluated_in_the_background_into_the_cache(tmp_path) -> None:
    setup, p = _setup(tmp_path), Prefetcher()
    masks = [(0,), (2, 3)]
    assert p.ready(setup, CONFIG, masks) == 0
    p.request(setup, CONFIG, masks)
    # the count goes up once a mask's evaluation has returned, a moment after its scores are stored
    assert _until(lambda: p.computed == 2)
    assert p.ready(setup, CONFIG, masks) == 2 and evaluate(setup, EvalConfig(n=6, val_n=0, drop=(2, 3))).cached
    p.request(setup, CONFIG, masks)  # nothing missing: nothing computed again
    time.sleep(0.3)
    assert p.computed == 2


def test_prefetching_waits_while_the_foreground_works(tmp_path) -> None:
    setup, p = _setup(tmp_path), Prefetcher()
    with p.foreground():
        p.request(setup, CONFIG, [(1,)])
        time.sleep(0.5)
        assert p.computed == 0 and not is_cached(setup, EvalConfig(n=6, val_n=0, drop=(1,)))
    assert _until(lambda: p.computed == 1)


def test_a_foreground_request_cancels_the_mask_being_prefetched(tmp_path, monkeypatch) -> None:
    setup, p = _setup(tmp_path), Prefetcher()
    started, outcome = threading.Event(), []

    def slow_evaluate(setup_, config, progress=None):
        started.set()
        try:
            for i in range(200):  # a long evaluation reporting progress per batch
                progress(i, 200)
                time.sleep(0.01)
        except prefetch.Cancelled:
            outcome.append("cancelled")
            raise
        outcome.append("finished")

    monkeypatch.setattr(prefetch, "evaluate", slow_evaluate)
    p.request(setup, CONFIG, [(1,)])
    assert started.wait(30)
    with p.foreground():
        assert _until(lambda: outcome == ["cancelled"], 5)
    p.clear()
    assert p.computed == 0


@pytest.mark.parametrize("value", ["0", "off", "false"])
@pytest.mark.parametrize("switch", ["prefetch", "latency"])
def test_the_apps_switches_turn_off_and_default_to_on(monkeypatch, switch, value) -> None:
    from core import settings

    name, enabled = {"prefetch": (settings.PREFETCH_ENV, settings.prefetch_enabled),
                     "latency": (settings.LATENCY_ENV, settings.latency_enabled)}[switch]
    monkeypatch.setenv(name, value)
    assert not enabled()
    monkeypatch.setenv(name, "1")
    assert enabled()
    monkeypatch.delenv(name)
    assert enabled()
