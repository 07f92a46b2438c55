"""Encoders as classifiers: dropping a post-LN BERT's attention, the logistic-regression head, and the
scoring, caching and explaining of a tiny BERT behind its head (random weights, no hub)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.tiny_models import tiny_bert, tiny_bert_loaded, tiny_loaded

from core.cache import ResultCache
from core.errors import UserError
from core.explain.dataset import DatasetExplainer, ExplainConfig
from core.explain.features import text_features
from core.explain.methods import explain
from core.explain.targets import ClassifierTarget, make_target
from core.model.efficiency import efficiency
from core.model.pruning import dropped_attention, install
from core.study.importance import compute_scores
from core.task.data import dataset_from_rows
from core.task.evaluation import EvalConfig, evaluate
from core.task.head import (
    ClassifierInput,
    Head,
    builder_for,
    fit_head,
    fit_logistic,
    logistic_objective,
    train_head,
)
from core.task.setup import Setup

WORDS_POS = ["good", "great", "loved", "wonderful", "funny", "moving"]
WORDS_NEG = ["bad", "boring", "terrible", "awful", "plot", "dialogue"]


def _rows(n: int = 60) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        pos = i % 2 == 0
        words = list(rng.choice(WORDS_POS if pos else WORDS_NEG, 3)) + ["the", "film", "is"][: 1 + i % 3]
        rows.append({"text": " ".join(words), "label": "positive" if pos else "negative"})
    return rows


@pytest.fixture(scope="module")
def setup():
    lm = tiny_bert_loaded()
    ds = dataset_from_rows(_rows(), "tiny-sentiment")
    return lm, ds


# ---------------------------------------------------------------- dropping attention in a post-LN encoder


def _hand_ffn_only(layer: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
    """LN(h + W2 gelu(W1 h + b1) + b2): the feed-forward block alone, written out from the weights."""
    inter, out = layer.intermediate.dense, layer.output.dense
    ln = layer.output.LayerNorm
    ffn = F.linear(F.gelu(F.linear(h, inter.weight, inter.bias)), out.weight, out.bias)
    return F.layer_norm(h + ffn, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


@pytest.mark.parametrize("layer_idx", [0, 2])
def test_dropping_bert_attention_skips_the_block_and_its_layernorm(layer_idx: int) -> None:
    model = tiny_bert()
    ids = torch.tensor([[2, 17, 33, 8, 41, 3]])
    with torch.no_grad():
        before = model(ids).last_hidden_state
    install(model)
    layer = model.encoder.layer[layer_idx]
    seen: dict[str, torch.Tensor] = {}
    calls = {"attention": 0}
    hooks = [
        layer.register_forward_pre_hook(lambda _m, a, k: seen.__setitem__("in", (a or (k["hidden_states"],))[0]),
                                        with_kwargs=True),
        layer.register_forward_hook(lambda _m, _a, out: seen.__setitem__("out", out)),
        layer.attention.register_forward_pre_hook(lambda *_: calls.__setitem__("attention", calls["attention"] + 1)),
    ]
    with torch.no_grad():
        assert torch.equal(model(ids).last_hidden_state, before), "no mask must be the unpruned model"
        calls["attention"] = 0
        with dropped_attention(model, [layer_idx]):
            pruned = model(ids).last_hidden_state
        expected = _hand_ffn_only(layer, seen["in"])
    for h in hooks:
        h.remove()
    assert calls["attention"] == 0, "the dropped attention block must not run"
    assert torch.allclose(seen["out"], expected, atol=1e-6, rtol=0)
    # the LayerNorm of the attention block is skipped too: LN1 applied to h would differ from h
    ln1 = layer.attention.output.LayerNorm
    assert not torch.allclose(ln1(seen["in"]), seen["in"], atol=1e-3)
    assert not torch.allclose(pruned, before, atol=1e-4)


def test_bert_importance_is_one_minus_cos_of_the_attention_block(setup) -> None:
    lm, _ = setup
    text = "the film is good and the acting is great"
    scores = compute_scores(lm, [text])
    ids = torch.tensor([lm.tokenizer(text)["input_ids"]])
    with torch.no_grad():
        hidden = lm.model(ids, output_hidden_states=True).hidden_states
        for i, layer in enumerate(lm.model.encoder.layer):
            x = hidden[i][0]
            y = layer.attention(hidden[i])[0][0]
            expected = float((1 - F.cosine_similarity(x, y, dim=-1)).mean())
            assert scores.scores[i] == pytest.approx(expected, abs=1e-5)


def test_efficiency_of_an_encoder_counts_no_kv_cache(setup) -> None:
    lm, _ = setup
    e = efficiency(lm, [1])
    assert e.kv_bytes_per_1k_tokens == 0 and e.kv_bytes_saved_per_1k_tokens == 0
    attn = sum(p.numel() for p in lm.model.encoder.layer[1].attention.parameters())
    assert e.parameters_saved == attn and e.flops_saved > 2 * attn


# ---------------------------------------------------------------- the logistic-regression head


def test_logistic_regression_matches_the_closed_form_maximum_likelihood() -> None:
    """One binary feature: the MLE's log-odds are logit(P(y=1 | x)) for x = 0 and x = 1."""
    x = np.array([[0.0]] * 100 + [[1.0]] * 100)
    y = np.array([1] * 30 + [0] * 70 + [1] * 80 + [0] * 20)
    w, b = fit_logistic(x, y, 2, c=1e6)  # a penalty this weak changes the log-odds by < 1e-4
    log_odds = lambda v: float((w[1] - w[0]) @ v + b[1] - b[0])  # noqa: E731
    assert log_odds(np.array([0.0])) == pytest.approx(np.log(0.3 / 0.7), abs=1e-3)
    assert log_odds(np.array([1.0])) == pytest.approx(np.log(0.8 / 0.2), abs=1e-3)


def test_logistic_regression_gradient_vanishes_at_the_optimum_and_shrinks_with_c() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 5))
    y = (x[:, 0] + 0.5 * rng.normal(size=80) > 0).astype(int) + (x[:, 1] > 1).astype(int)
    norms = []
    for c in (0.01, 1.0):
        w, b = fit_logistic(x, y, 3, c)
        _, grad = logistic_objective(np.concatenate([w.ravel(), b]), x, y, 3, c)
        assert np.abs(grad).max() < 1e-4
        # the gradient, written out: C * X^T (P - Y) + W for the weights
        p = np.exp(x @ w.T + b)
        p /= p.sum(axis=1, keepdims=True)
        np.testing.assert_allclose(c * (p - np.eye(3)[y]).T @ x + w, grad[:15].reshape(3, 5), atol=1e-8)
        norms.append(np.linalg.norm(w))
    assert norms[0] < norms[1]


def test_the_head_keeps_the_c_with_the_lowest_validation_log_loss() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(120, 4))
    y = (x[:, 0] + rng.normal(size=120) > 0).astype(int)
    grid = (0.001, 0.1, 10.0)
    head = fit_head(x[:80], y[:80], x[80:], y[80:], 2, grid)
    mean, scale = x[:80].mean(0), x[:80].std(0) + 1e-6
    losses = {}
    for c in grid:
        w, b = fit_logistic((x[:80] - mean) / scale, y[:80], 2, c)
        z = (x[80:] - mean) / scale @ w.T + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        losses[c] = -np.log(p[np.arange(40), y[80:]]).mean()
    assert head.c == min(losses, key=losses.get)
    assert head.val_nll == pytest.approx(losses[head.c], rel=1e-6)
    np.testing.assert_allclose(head.logits_torch(torch.tensor(x[:5])).numpy(), head.logits(x[:5]), atol=1e-10)
    again = Head.from_dict(head.as_dict())
    assert again.fingerprint == head.fingerprint
    np.testing.assert_allclose(again.logits(x), head.logits(x))


def test_a_head_needs_two_classes() -> None:
    x = np.zeros((4, 2))
    with pytest.raises(UserError, match="only one class"):
        fit_head(x, np.zeros(4, dtype=int), x, np.zeros(4, dtype=int), 2)


# ---------------------------------------------------------------- a tiny BERT behind its head


def _by_hand(lm, head: Head, text: str, drop=()) -> np.ndarray:
    """Class probabilities of one unpadded ``[CLS] text [SEP]``, mean-pooled, standardised, linear."""
    ids = [lm.tokenizer.cls_token_id, *lm.tokenizer(" " + text, add_special_tokens=False)["input_ids"],
           lm.tokenizer.sep_token_id]
    with torch.no_grad(), dropped_attention(lm.model, drop):
        pooled = lm.model(torch.tensor([ids])).last_hidden_state[0].mean(0).double().numpy()
    z = ((pooled - head.mean) / head.scale) @ head.weight.T + head.bias
    return np.exp(z - z.max()) / np.exp(z - z.max()).sum()


@pytest.mark.parametrize("drop", [(), (0,), (1, 3)])
def test_evaluate_reads_the_frozen_head_on_padded_batches(setup, drop) -> None:
    lm, ds = setup
    result = evaluate(Setup(lm, ds), EvalConfig(n=9, drop=drop, val_n=0, batch_size=4))
    head = train_head(lm, ds)  # the head of the full encoder: pruning happens after training
    assert head.fitted_on == ()
    assert result.prompt["head"] == head.fingerprint and result.prompt["head_fitted_on"] == []
    for ex, probs in zip(result.examples, result.probs, strict=True):
        np.testing.assert_allclose(probs, _by_hand(lm, head, ex.text, drop), atol=1e-6)


def test_heads_are_cached_by_content_and_refit_on_the_pruned_encoder(setup, tmp_path) -> None:
    lm, ds = setup
    cache = ResultCache(tmp_path)
    calls = {"n": 0}
    hook = lm.model.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    try:
        first = train_head(lm, ds, cache=cache)
        ran = calls["n"]
        again = train_head(lm, ds, cache=cache)
        assert calls["n"] == ran and again.fingerprint == first.fingerprint, "a cached head runs no model"
        refit = train_head(lm, ds, drop=(1, 3), cache=cache)
    finally:
        hook.remove()
    assert refit.fitted_on == (1, 3) and refit.fingerprint != first.fingerprint
    frozen = evaluate(Setup(lm, ds, cache=cache), EvalConfig(n=9, drop=(1, 3), val_n=0))
    refitted = evaluate(Setup(lm, ds, refit_head=True, cache=cache), EvalConfig(n=9, drop=(1, 3), val_n=0))
    assert frozen.prompt["head"] == first.fingerprint and refitted.prompt["head"] == refit.fingerprint
    assert not np.allclose(frozen.logits, refitted.logits)
    for ex, probs in zip(refitted.examples, refitted.probs, strict=True):
        np.testing.assert_allclose(probs, _by_hand(lm, refit, ex.text, (1, 3)), atol=1e-6)


def test_builder_for_dispatches_on_the_model_and_rejects_refit_for_a_causal_lm(setup) -> None:
    lm, ds = setup
    assert isinstance(builder_for(lm, ds), ClassifierInput)
    causal = tiny_loaded("llama")
    with pytest.raises(UserError, match="causal LM"):
        builder_for(causal, ds, refit_head=True)
    with pytest.raises(UserError, match="causal LM"):
        train_head(causal, ds)
    mc = dataset_from_rows(_rows(), "tiny-sentiment")
    mc.task = "multiple-choice"
    with pytest.raises(UserError, match="classifies texts"):
        train_head(lm, mc)


@pytest.mark.parametrize("drop", [(), (0, 2)])
def test_classifier_target_agrees_with_evaluate_and_its_embedding_path(setup, drop) -> None:
    lm, ds = setup
    builder = builder_for(lm, ds)
    target = make_target(lm, builder, drop)
    assert isinstance(target, ClassifierTarget)
    result = evaluate(Setup(lm, ds), EvalConfig(n=5, drop=drop, val_n=0))
    ids = [builder.encode(ex.text).ids[:-1] for ex in result.examples]
    np.testing.assert_allclose(target.probs(ids), result.probs, atol=1e-6)
    for row, x in enumerate(ids):
        via = target.probs_from_embeddings(target.embed(x)).detach().numpy()[0]
        np.testing.assert_allclose(via, result.probs[row], atol=1e-5)


def test_explainers_work_unchanged_on_the_classifier(setup) -> None:
    lm, ds = setup
    builder = builder_for(lm, ds)
    target = make_target(lm, builder, (1,))
    f = text_features(lm.tokenizer, "wonderful funny plot", max_tokens=builder.max_text_tokens)
    occl = explain(target, f, "occlusion", {})
    p = target.probs([list(f.ids)])[0, occl.predicted]
    for j in range(f.n):
        keep = np.ones(f.n, dtype=bool)
        keep[j] = False
        assert occl.scores[j] == pytest.approx(p - target.probs([f.ids_keeping(keep)])[0, occl.predicted], abs=1e-6)
    ig = explain(target, f, "integrated-gradients", {"n_steps": 64})
    emb = target.embed(f.ids)
    with torch.no_grad():
        gap = (target.probs_from_embeddings(emb) - target.probs_from_embeddings(torch.zeros_like(emb)))[0, ig.predicted]
    assert ig.scores.sum() == pytest.approx(float(gap), abs=2e-3)
    explainer = DatasetExplainer(Setup(lm, ds), (1,), ExplainConfig.make("occlusion"))
    a, _ = explainer.explain(ds.splits["test"][0])
    assert list(a.names) == list(text_features(lm.tokenizer, ds.splits["test"][0].text).names)
