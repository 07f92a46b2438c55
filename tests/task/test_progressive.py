"""Results as they come (chunks of a random order) and single flight: one computation for concurrent askers."""

from __future__ import annotations

import threading
import time

import numpy as np
from helpers.tiny_models import tiny_loaded

from core.cache import ResultCache
from core.task.data import dataset_from_rows
from core.task.evaluation import EvalConfig, evaluate
from core.task.prompts import PromptBuilder, PromptConfig
from core.task.scoring import score_examples
from core.task.setup import Setup

ROWS = [{"text": f"{t} {i}", "label": lab} for i in range(10) for t, lab in [
    ("the film is good", "positive"), ("a bad and boring movie, long and tedious", "negative"),
    ("I loved it", "positive"), ("terrible", "negative"),
]]


def test_partial_scores_arrive_after_1_2_4_batches_spanning_every_length_and_match_the_final_ones() -> None:
    from core.task.scoring import spread

    assert spread(8) == [2, 6, 4, 0, 3, 7, 5, 1] and spread(1) == [0]
    assert all(sorted(spread(n)) == list(range(n)) for n in range(1, 100))
    lm = tiny_loaded("llama")
    ds = dataset_from_rows(ROWS, "tiny")
    builder = PromptBuilder(lm.tokenizer, ds, PromptConfig(style="few-shot"), lm.has_chat_template, lm.max_positions)
    examples = [e for s in ds.splits.values() for e in s][:37]
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    scores = score_examples(lm, builder, examples, (1,), batch_size=5, partial=lambda i, lg: seen.append((i, lg)))
    plain = score_examples(lm, builder, examples, (1,), batch_size=5)
    assert [len(i) for i, _ in seen] == [5, 10, 20, 37]  # after 1, 2 and 4 batches, then at the end
    lengths = np.array([len(builder.encode(ex.text).ids) for ex in examples])
    assert lengths[seen[1][0]].max() < lengths.max()  # the first two batches are typical, not the longest
    assert lengths[seen[2][0]].max() == lengths.max()  # by four, the longest are in too
    for idx, logits in seen:
        np.testing.assert_allclose(logits, scores.logits[idx], atol=1e-6)
    np.testing.assert_allclose(scores.logits, plain.logits, atol=1e-5)


def test_evaluate_reports_partial_probabilities_with_their_labels(tmp_path) -> None:
    setup = Setup(tiny_loaded("llama"), dataset_from_rows(ROWS, "tiny"), PromptConfig(style="zero-shot"),
                  cache=ResultCache(tmp_path))
    parts = []
    result = evaluate(setup, EvalConfig(n=8, val_n=0, batch_size=2, drop=(0,)), partial=parts.append)
    assert [(p.done, p.total) for p in parts] == [(2, 8), (4, 8), (8, 8)]
    np.testing.assert_allclose(parts[-1].probs, result.probs, atol=1e-9)
    assert sorted(parts[-1].labels) == sorted(result.labels) and len(parts[0].labels) == 2
    parts.clear()
    evaluate(setup, EvalConfig(n=8, val_n=0, batch_size=2, drop=(0,)), partial=parts.append)
    assert parts == []  # from the cache: nothing partial, the whole result at once


def test_two_threads_asking_for_the_same_scores_compute_them_once(tmp_path, monkeypatch) -> None:
    import core.task.evaluation as evaluation

    setup = Setup(tiny_loaded("llama"), dataset_from_rows(ROWS, "tiny"), PromptConfig(style="zero-shot"),
                  cache=ResultCache(tmp_path))
    calls: list[int] = []
    real = evaluation.score_examples

    def slow(*args, **kwargs):
        calls.append(1)
        time.sleep(0.5)  # long enough for the other thread to arrive while this one computes
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "score_examples", slow)
    start = threading.Barrier(2)
    results = []

    def ask() -> None:
        start.wait()
        results.append(evaluate(setup, EvalConfig(n=8, val_n=0, drop=(2,))))

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 2
    assert sorted(r.cached for r in results) == [False, True]
    np.testing.assert_array_equal(results[0].probs, results[1].probs)
