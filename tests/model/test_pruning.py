"""Dropping attention layers: exactness against hand computations, for every family in the table."""

from __future__ import annotations

import threading

import pytest
import torch
from helpers.tiny_models import FAMILIES, tiny_model

from core.errors import UserError
from core.model.architectures import spec_for_model, supported_model_types
from core.model.pruning import dropped_attention, expand_cache, install, new_cache, validate_mask


def _hand_mlp_only(family: str, layer: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
    """What each family's layer computes without attention, written out by hand."""
    if family in {"llama", "mistral", "qwen2", "qwen3", "gemma", "phi3"}:
        return h + layer.mlp(layer.post_attention_layernorm(h))
    if family in {"gemma2", "gemma3"}:
        return h + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(h)))
    if family == "gpt2":
        return h + layer.mlp(layer.ln_2(h))
    if family.startswith("gpt_neox"):
        return h + layer.mlp(layer.post_attention_layernorm(h))
    if family == "opt":
        return h + layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(h))))
    if family == "opt_post_ln":
        return layer.final_layer_norm(h + layer.fc2(layer.activation_fn(layer.fc1(h))))
    raise AssertionError(family)


IDS = torch.tensor([[5, 17, 33, 8, 41, 9, 60, 12]])


@pytest.mark.parametrize("family", FAMILIES)
def test_no_mask_is_exactly_the_unpruned_model(family: str) -> None:
    model = tiny_model(family)
    with torch.no_grad():
        before = model(IDS).logits
        install(model)
        after_plain = model(IDS).logits
        with dropped_attention(model, []):
            after_empty = model(IDS).logits
    assert torch.equal(before, after_plain)
    assert torch.equal(before, after_empty)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layer_idx", [0, 2])
def test_dropped_layer_equals_hand_computation(family: str, layer_idx: int) -> None:
    model = tiny_model(family)
    spec = spec_for_model(model)
    layer = spec.layer_list(model)[layer_idx]
    seen: dict[str, torch.Tensor] = {}
    calls = {"attention": 0}

    def pre(_mod, args, kwargs):
        seen["in"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

    def post(_mod, _args, _kwargs, out):
        seen["out"] = (out[0] if isinstance(out, tuple) else out).detach().clone()

    def count(*_):
        calls["attention"] += 1

    hooks = [
        layer.register_forward_pre_hook(pre, with_kwargs=True),
        layer.register_forward_hook(post, with_kwargs=True),
        spec.attention_module(layer).register_forward_pre_hook(count),
    ]
    with torch.no_grad():
        full = model(IDS).logits
        assert calls["attention"] == 1
        with dropped_attention(model, [layer_idx]):
            pruned = model(IDS).logits
        expected = _hand_mlp_only(family, layer, seen["in"])
    for h in hooks:
        h.remove()
    assert calls["attention"] == 1, "the attention of a dropped layer must not run at all"
    assert torch.allclose(seen["out"], expected, atol=1e-6, rtol=0)
    assert not torch.allclose(full, pruned, atol=1e-4), "dropping a layer must change the output"


@pytest.mark.parametrize("family", FAMILIES)
def test_mask_undone_after_exception(family: str) -> None:
    model = tiny_model(family)
    with torch.no_grad():
        before = model(IDS).logits
        with pytest.raises(RuntimeError), dropped_attention(model, [1]):
            raise RuntimeError("boom")
        assert torch.equal(model(IDS).logits, before)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mask", [[], [0], [0, 1], [1, 3]])
def test_prefix_cache_matches_no_cache(family: str, mask: list[int]) -> None:
    """The KV-cache trap: with layer 0 dropped, a cached prefix must still be seen."""
    model = tiny_model(family)
    base = model.base_model
    prefix, rest = IDS[:, :5], torch.tensor([[22, 23, 24], [30, 31, 0]])
    mask2d = torch.tensor([[1, 1, 1], [1, 1, 0]])
    with torch.no_grad(), dropped_attention(model, mask):
        full_ids = torch.cat([prefix.expand(2, -1), rest], dim=1)
        full_mask = torch.cat([torch.ones(2, 5, dtype=torch.long), mask2d], dim=1)
        ref = base(input_ids=full_ids, attention_mask=full_mask).last_hidden_state[:, 5:]
        cache = new_cache(model)
        base(input_ids=prefix, past_key_values=cache, use_cache=True)
        batch_cache = expand_cache(model, cache, 2)
        pos = torch.arange(5, 8).unsqueeze(0).expand(2, -1)
        got = base(input_ids=rest, attention_mask=full_mask, past_key_values=batch_cache,
                   position_ids=pos, use_cache=True).last_hidden_state
    assert torch.allclose(ref[0], got[0], atol=1e-5)
    assert torch.allclose(ref[1, :2], got[1, :2], atol=1e-5)


def test_two_threads_with_different_masks_get_their_own_results() -> None:
    model = tiny_model("llama")
    with torch.no_grad():
        expected = {}
        for mask in ([], [0], [1, 2], [3]):
            with dropped_attention(model, mask):
                expected[tuple(mask)] = model(IDS).logits
    results: dict[tuple[int, ...], list[bool]] = {k: [] for k in expected}
    barrier = threading.Barrier(len(expected))

    def worker(mask: tuple[int, ...]) -> None:
        barrier.wait()
        for _ in range(20):
            with torch.no_grad(), dropped_attention(model, mask):
                results[mask].append(torch.equal(model(IDS).logits, expected[mask]))

    threads = [threading.Thread(target=worker, args=(m,)) for m in expected]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(all(r) and len(r) == 20 for r in results.values())
    # distinct masks give distinct outputs, so a leak between threads would have been seen
    assert not torch.equal(expected[()], expected[(0,)])


@pytest.mark.parametrize(
    ("layers", "message"),
    [([4], "out of range"), ([-1], "negative"), ([1, 1], "twice"), (["x"], "not an integer")],
)
def test_bad_layer_indices_are_rejected(layers: list, message: str) -> None:
    with pytest.raises(UserError, match=message):
        validate_mask(layers, 4)


def test_dropping_every_layer_is_allowed() -> None:
    model = tiny_model("llama")
    with torch.no_grad(), dropped_attention(model, range(4)) as mask:
        out = model(IDS).logits
    assert mask == (0, 1, 2, 3) and torch.isfinite(out).all()


def test_unsupported_architecture_names_the_supported_ones() -> None:
    from transformers import T5Config

    from core.model.architectures import spec_for_config

    with pytest.raises(UserError) as err:
        spec_for_config(T5Config())
    assert "unsupported architecture 't5'" in str(err.value)
    for name in supported_model_types():
        assert name in str(err.value)
