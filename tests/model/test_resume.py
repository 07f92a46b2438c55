"""Resuming from hidden-state checkpoints: resumed answers equal a full recomputation, for every family.

Each test scores masks one after the other with the process's state store on (so that later masks
start from the states earlier ones left), and compares every answer with the same mask scored with
the store off, running every layer.
"""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest
import torch
from helpers.tiny_models import FAMILIES, tiny_bert_loaded, tiny_loaded

from core.model.pruning import dropped_attention
from core.model.states import STATES, Resumer, StateStore, model_key, record_for, row_digest
from core.task.data import dataset_from_rows
from core.task.head import ClassifierInput, fit_head, pooled_features
from core.task.prompts import PromptBuilder, PromptConfig
from core.task.scoring import score_examples

ROWS = [{"text": t, "label": lab} for t, lab in [
    ("the film is good", "positive"), ("a bad and boring movie", "negative"), ("I loved it", "positive"),
    ("terrible plot, awful dialogue and a great deal of noise", "negative"), ("wonderful", "positive"),
    ("bad", "negative"), ("moving and funny, the acting is great", "positive"), ("boring", "negative"),
]] * 2
TOLERANCE = 1e-5
"""The largest |logit difference| allowed between a resumed and a full recomputation in fp32."""


def _scoring(lm):
    ds = dataset_from_rows(ROWS, "tiny")
    builder = PromptBuilder(lm.tokenizer, ds, PromptConfig(style="few-shot"), lm.has_chat_template, lm.max_positions)
    return builder, [e for s in ds.splits.values() for e in s]


def _reference(lm, builder, examples, drop, **kw) -> np.ndarray:
    """The mask's logits with every layer run (the store off)."""
    STATES.enabled = False
    try:
        return score_examples(lm, builder, examples, drop, **kw).logits
    finally:
        STATES.enabled = True


def _random_masks(n_layers: int, count: int, seed: int) -> list[tuple[int, ...]]:
    """Masks that share prefixes with each other (so that they resume), layer 0 dropped in some and kept in others."""
    rng = random.Random(seed)
    masks = [(), (0,)]
    while len(masks) < count:
        base = set(rng.choice(masks))
        base ^= {rng.randrange(n_layers)}
        if len(base) < n_layers and tuple(sorted(base)) not in masks:
            masks.append(tuple(sorted(base)))
    return masks


class _Calls:
    """Counts the calls of one layer's attention module (a layer below a resume start is never run)."""

    def __init__(self, lm, layer: int) -> None:
        self.n = 0
        attention = lm.spec.attention_module(lm.spec.layer_list(lm.model)[layer])
        self._hook = attention.register_forward_pre_hook(lambda *_: setattr(self, "n", self.n + 1))

    def remove(self) -> None:
        self._hook.remove()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("prefix_cache", [True, False])
def test_resumed_answers_equal_a_full_recomputation(family: str, prefix_cache: bool) -> None:
    lm = tiny_loaded(family)
    builder, examples = _scoring(lm)
    masks = _random_masks(lm.num_layers, 7, seed=len(family))
    STATES.hits = 0
    for drop in masks:
        resumed = score_examples(lm, builder, examples, drop, batch_size=5, use_prefix_cache=prefix_cache)
        full = _reference(lm, builder, examples, drop, batch_size=3, use_prefix_cache=prefix_cache)
        assert np.abs(resumed.logits - full).max() <= TOLERANCE, (family, drop)
    assert STATES.hits > 0, "later masks must have started from stored states"


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2", "opt_post_ln"])
def test_a_mask_starts_at_its_first_difference_and_layers_below_are_not_run(family: str) -> None:
    lm = tiny_loaded(family)
    builder, examples = _scoring(lm)
    score_examples(lm, builder, examples, ())  # records the state entering every layer
    below, at = _Calls(lm, 1), _Calls(lm, 3)
    try:
        resumed = score_examples(lm, builder, examples, (2,)).logits
    finally:
        below.remove()
        at.remove()
    assert below.n == 0, "layer 1's attention ran: the pass did not start at layer 2"
    assert at.n > 0  # layer 3 is kept and runs, for the prefix and the inputs
    assert np.abs(resumed - _reference(lm, builder, examples, (2,))).max() <= TOLERANCE


def test_a_mask_with_layer_0_dropped_resumes_behind_the_prefix_cache() -> None:
    """The KV-cache trap: with layer 0 skipped, the cache's length must come from a layer that is filled."""
    lm = tiny_loaded("llama")
    builder, examples = _scoring(lm)
    score_examples(lm, builder, examples, (0,))
    for drop in [(0, 2), (0, 1, 2), (0, 3)]:
        resumed = score_examples(lm, builder, examples, drop).logits
        assert np.abs(resumed - _reference(lm, builder, examples, drop)).max() <= TOLERANCE, drop


def test_only_the_last_layer_kept_above_the_start_and_nothing_kept_above_it() -> None:
    lm = tiny_loaded("qwen2")
    builder, examples = _scoring(lm)
    score_examples(lm, builder, examples, ())
    for drop in [(1, 2), (1, 2, 3), (2, 3)]:  # (1, 2, 3): from layer 1 on, no attention runs at all
        resumed = score_examples(lm, builder, examples, drop).logits
        assert np.abs(resumed - _reference(lm, builder, examples, drop)).max() <= TOLERANCE, drop


def test_threads_resuming_different_masks_at_once_get_their_own_answers() -> None:
    lm = tiny_loaded("mistral")
    builder, examples = _scoring(lm)
    score_examples(lm, builder, examples, ())
    masks = [(1,), (2,), (3,), (1, 3), (0, 2)]
    expected = {m: _reference(lm, builder, examples, m) for m in masks}
    got: dict[tuple[int, ...], np.ndarray] = {}
    errors: list[BaseException] = []

    def work(drop: tuple[int, ...]) -> None:
        try:
            for _ in range(3):
                got[drop] = score_examples(lm, builder, examples, drop, batch_size=4).logits
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(m,)) for m in masks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for m in masks:
        assert np.abs(got[m] - expected[m]).max() <= TOLERANCE, m


def test_answers_are_the_same_after_states_are_evicted(monkeypatch) -> None:
    lm = tiny_loaded("phi3")
    builder, examples = _scoring(lm)
    monkeypatch.setattr(STATES, "_max_bytes", 6_000)  # a few rows' states at a time
    STATES.evictions = 0
    for drop in _random_masks(lm.num_layers, 6, seed=3):
        resumed = score_examples(lm, builder, examples, drop, batch_size=4).logits
        assert np.abs(resumed - _reference(lm, builder, examples, drop)).max() <= TOLERANCE, drop
    assert STATES.evictions > 0
    assert STATES.info()["bytes"] <= 6_000


def test_the_store_evicts_the_least_recently_used_first_and_stays_within_its_budget() -> None:
    store = StateStore(max_bytes=3 * 40, enabled=True)  # three states of 10 floats
    keys = [("m", bytes([i]), 1, ()) for i in range(4)]
    for key in keys[:3]:
        store.put(key, torch.zeros(10))
    assert store.get(keys[0]) is not None  # now the most recently used
    store.put(keys[3], torch.zeros(10))
    assert store.get(keys[1]) is None and all(store.get(k) is not None for k in (keys[0], keys[2], keys[3]))
    assert store.info()["bytes"] == 120 and store.evictions == 1
    store.put(keys[0], torch.zeros(100))  # larger than the whole budget: not kept, nothing else evicted
    assert store.info()["states"] == 3
    off = StateStore(max_bytes=1000, enabled=False)
    off.put(keys[0], torch.zeros(10))
    assert off.get(keys[0]) is None and off.deepest("m", bytes([0]), [()] * 5, 3) == (0, None)


def test_keys_tell_apart_what_changes_a_state() -> None:
    assert row_digest([1, 2], [3]) != row_digest([1], [2, 3])  # the same tokens at other positions
    assert row_digest([], [1, 2, 3]) != row_digest([1, 2, 3], [])
    assert row_digest([1], [2]) == row_digest([1], [2])
    llama, other = tiny_loaded("llama"), tiny_loaded("llama", seed=1)
    assert model_key(llama) != model_key(other)
    assert record_for((25, 26), [(25, 26, 29), (25,), (22, 25, 26), (25, 26)]) == {29, 26, 22}


def test_an_encoder_resumes_its_pooled_features_and_a_refitted_head_reads_them() -> None:
    lm = tiny_bert_loaded()
    ds = dataset_from_rows(ROWS, "tiny")
    inputs = [[5, 6, 7, 3], [8, 9, 3], [10, 11, 12, 13, 14, 3]]
    with torch.inference_mode():
        pooled_features(lm, [2], inputs)  # the full encoder: records every layer
    for drop in [(2,), (3,), (1, 3), (0,)]:
        with dropped_attention(lm.model, drop):
            resumed = pooled_features(lm, [2], inputs)
            STATES.enabled = False
            try:
                full = pooled_features(lm, [2], inputs)
            finally:
                STATES.enabled = True
        assert np.abs(resumed - full).max() <= TOLERANCE, drop
    x = np.random.default_rng(0).normal(size=(20, lm.model.config.hidden_size))
    y = np.arange(20) % 2
    head = fit_head(x, y, x, y, 2, fitted_on=(1, 3))
    builder = ClassifierInput(lm.tokenizer, ds, head, lm.max_positions)
    examples = [e for s in ds.splits.values() for e in s]
    resumed = score_examples(lm, builder, examples, (1, 3)).logits
    assert np.abs(resumed - _reference(lm, builder, examples, (1, 3))).max() <= TOLERANCE


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_bf16_resumed_answers_agree_like_the_other_bf16_paths(family: str) -> None:
    lm = tiny_loaded(family)
    lm.model.to(torch.bfloat16)
    builder, examples = _scoring(lm)
    score_examples(lm, builder, examples, ())
    for drop in [(2,), (0, 3), (1,)]:
        resumed = score_examples(lm, builder, examples, drop, batch_size=5).logits
        reference = _reference(lm, builder, examples, drop, batch_size=3)
        # the tolerance of tests/model/test_batching.py's bf16 paths
        np.testing.assert_allclose(resumed, reference, atol=0.03 * np.abs(reference).max())


def test_a_resumer_groups_rows_by_start_and_records_above_it() -> None:
    lm = tiny_loaded("llama")
    builder, examples = _scoring(lm)
    rows = [builder.encode(ex.text).ids for ex in examples[:4]]
    with torch.inference_mode(), dropped_attention(lm.model, ()):
        first = Resumer(lm, builder.prefix_ids, rows)
    assert first.starts == [0, 0, 0, 0] and first.record == {1, 2, 3}
    score_examples(lm, builder, examples[:2], ())
    with dropped_attention(lm.model, (3,)):
        second = Resumer(lm, builder.prefix_ids, rows, record=())
    assert second.starts[:2] == [3, 3] and second.starts[2:] == [0, 0]
    assert second.groups([3, 0, 2, 1]) == [(0, [3, 2]), (3, [0, 1])]
    assert second.lowest() == 0 and not second.record
