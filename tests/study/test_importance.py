"""He et al.'s attention-drop score against an independent computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers.tiny_models import tiny_loaded

from core.errors import UserError
from core.study.importance import attention_scores, compute_scores

TEXTS = ["the film is good", "a bad and boring movie that goes on", "I loved it"]


def _independent(lm, texts):
    """Y is the input of post_attention_layernorm (= X + attention branch) in a Llama layer."""
    layers = lm.spec.layer_list(lm.model)
    totals, count = torch.zeros(len(layers), dtype=torch.float64), 0
    for text in texts:
        ids = torch.tensor([lm.tokenizer(text)["input_ids"]])
        xs: dict[int, torch.Tensor] = {}
        ys: dict[int, torch.Tensor] = {}
        hooks = []
        for i, layer in enumerate(layers):
            hooks.append(layer.register_forward_pre_hook(
                lambda m, a, k, i=i, xs=xs: xs.__setitem__(i, (a[0] if a else k["hidden_states"]).double()),
                with_kwargs=True))
            hooks.append(layer.post_attention_layernorm.register_forward_pre_hook(
                lambda m, a, i=i, ys=ys: ys.__setitem__(i, a[0].double())))
        with torch.no_grad():
            lm.model(ids)
        for h in hooks:
            h.remove()
        for i in range(len(layers)):
            totals[i] += (1 - F.cosine_similarity(xs[i][0], ys[i][0], dim=-1)).sum()
        count += ids.shape[1]
    return (totals / count).tolist()


def test_scores_match_an_independent_computation_with_padding() -> None:
    lm = tiny_loaded("llama")
    got = compute_scores(lm, TEXTS, batch_size=2)
    assert got.n_tokens == sum(len(lm.tokenizer(t)["input_ids"]) for t in TEXTS)
    assert got.scores == pytest.approx(_independent(lm, TEXTS), abs=1e-5)
    assert sorted(got.order) == list(range(4))
    assert got.most_redundant(2) == got.order[:2]
    assert got.scores[got.order[0]] <= got.scores[got.order[-1]]


@pytest.mark.parametrize("family", ["gemma2", "gpt2", "opt_post_ln", "gpt_neox"])
def test_every_family_gets_finite_scores_in_range(family: str) -> None:
    got = compute_scores(tiny_loaded(family), TEXTS)
    assert len(got.scores) == 4 and all(0.0 <= s <= 2.0 for s in got.scores)


def test_scores_are_cached(tmp_path) -> None:
    from core.cache import ResultCache

    lm, cache = tiny_loaded("llama"), ResultCache(tmp_path)
    first = attention_scores(lm, TEXTS, cache=cache)
    second = attention_scores(lm, TEXTS, cache=cache)
    assert not first.cached and second.cached and second.scores == first.scores


def test_k_out_of_range() -> None:
    with pytest.raises(UserError, match="between 0 and 4"):
        compute_scores(tiny_loaded("llama"), TEXTS).most_redundant(5)


@pytest.mark.parametrize("content", [b"\xff\xfe", b"[]", b"{}", b'{"scores": [0.1], "n_texts": 1, "n_tokens": 2, '
                                     b'"seconds": 0}', b'{"scores": "abc", "n_texts": 1, "n_tokens": 2, "seconds": 0}'])
def test_a_damaged_importance_entry_is_recomputed(tmp_path, content: bytes) -> None:
    from core.cache import ResultCache

    lm, cache = tiny_loaded("llama"), ResultCache(tmp_path)
    first = attention_scores(lm, ["a good film", "a bad one"], cache=cache)
    (entry,) = tmp_path.glob("importance-*.json")
    entry.write_bytes(content)
    again = attention_scores(lm, ["a good film", "a bad one"], cache=cache)
    assert not again.cached and again.scores == pytest.approx(first.scores)
    assert attention_scores(lm, ["a good film", "a bad one"], cache=cache).cached
