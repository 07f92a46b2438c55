"""Healing a pruned model with LoRA: where the adapters sit, that the mask is on in training, the cache,
resuming, refusals, running out of memory, and that a healed model with zero learning rate is the pruned one."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers.tiny_models import FAMILIES, tiny_bert_loaded, tiny_loaded

import core.study.healing as healing
from core.cache import ResultCache
from core.errors import UserError
from core.model.lora import LINEAR_TYPES, adapter_targets, add_adapters
from core.model.pruning import dropped_attention, private_copy
from core.study.healed import compare_healed, healed_model
from core.study.healing import (
    ADAPTERS,
    CHECKPOINT,
    HealConfig,
    cached_steps,
    heal,
    heal_key,
    lm_loss,
    training_data,
)
from core.task import calibration as cal
from core.task.data import dataset_from_rows
from core.task.evaluation import EvalConfig, evaluate
from core.task.prompts import PromptConfig
from core.task.scoring import score_examples
from core.task.setup import Setup

ROWS = [{"text": f"{t} {i}", "label": lab} for i in range(30) for t, lab in [
    ("the film is good", "positive"), ("a bad and boring movie, long and tedious", "negative"),
    ("I loved it", "positive"), ("terrible", "negative"),
]]
DROP = (1, 2)
SMALL = HealConfig(steps=4, batch_size=4, seq_len=16, lr=1e-2)


def _setup(family: str = "llama", cache: bool = True) -> Setup:
    return Setup(tiny_loaded(family), dataset_from_rows(ROWS, "tiny"), PromptConfig(style="few-shot"),
                 cache=ResultCache() if cache else None)


def _ran_under_mask(model: torch.nn.Module, drop: tuple[int, ...]) -> set[str]:
    """The linear maps inside the decoder layers that a forward under ``drop`` calls (recorded by hooks)."""
    ran: set[str] = set()
    hooks = [m.register_forward_hook(lambda *_, n=name: ran.add(n)) for name, m in model.named_modules()
             if isinstance(m, LINEAR_TYPES) and m is not model.get_output_embeddings()]
    try:
        with torch.no_grad(), dropped_attention(model, drop):
            model(input_ids=torch.tensor([[5, 6, 7, 8, 9, 10]]))
    finally:
        for h in hooks:
            h.remove()
    return ran


@pytest.mark.parametrize("family", FAMILIES)
def test_adapters_sit_on_exactly_the_linear_maps_that_run_under_the_mask(family: str) -> None:
    lm = tiny_loaded(family)
    drop = (0, 2)
    targets = adapter_targets(lm.model, drop)
    assert set(targets) == _ran_under_mask(lm.model, drop)
    assert len(targets) == len(set(targets))
    layers = lm.spec.layer_list(lm.model)
    for idx in drop:  # nothing in a dropped layer's attention; its MLP branch has adapters
        attention = {id(m) for m in lm.spec.attention_module(layers[idx]).modules()}
        inside = [n for n in targets if id(lm.model.get_submodule(n)) in attention]
        assert inside == []
        assert any(n.startswith(f"{lm.spec.layers}.{idx}.") for n in targets)
    for idx in (1, 3):  # a kept layer: every linear map has one
        linear = [n for n, m in layers[idx].named_modules() if isinstance(m, LINEAR_TYPES)]
        assert {f"{lm.spec.layers}.{idx}.{n}" for n in linear} <= set(targets)
    peft_model = add_adapters(private_copy(lm.model), drop, rank=2, alpha=4, seed=0)
    adapted = {n.removeprefix("base_model.model.") for n, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    assert adapted == set(targets)


def test_a_plain_deepcopy_ignores_its_mask_and_a_private_copy_does_not() -> None:
    lm = tiny_loaded("llama")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        full = lm.model(input_ids=ids).logits
        with dropped_attention(lm.model, DROP):
            pruned = lm.model(input_ids=ids).logits
        plain = copy.deepcopy(lm.model)
        with dropped_attention(plain, DROP):
            assert torch.equal(plain(input_ids=ids).logits, full)  # the trap: the mask silently does not apply
        own = private_copy(lm.model, copied={"model.layers.0.mlp.down_proj.weight"})
        with dropped_attention(own, DROP):
            assert torch.equal(own(input_ids=ids).logits, pruned)
        assert torch.equal(own(input_ids=ids).logits, full)
    shared = dict(own.named_parameters())
    for name, p in lm.model.named_parameters():
        assert shared[name] is not p
        same_storage = shared[name].data_ptr() == p.data_ptr()
        assert same_storage == (name != "model.layers.0.mlp.down_proj.weight")
    own.get_parameter("model.layers.0.mlp.down_proj.weight").data.add_(1.0)  # a copied weight is its own
    own.get_parameter("model.layers.1.mlp.down_proj.weight").requires_grad_(False)
    assert lm.model.get_parameter("model.layers.1.mlp.down_proj.weight").requires_grad
    with torch.no_grad():
        assert torch.equal(lm.model(input_ids=ids).logits, full)


def test_the_mask_is_active_in_training_lm_objective() -> None:
    setup = _setup(cache=False)
    config = HealConfig(steps=1, batch_size=4, seq_len=16, lr=0.0)
    result = heal(setup, DROP, config)
    data = training_data(setup, DROP, config)
    rows = [data.rows[i] for i in data.batch(0, 4, config.seed)]
    with torch.no_grad():
        with dropped_attention(setup.lm.model, DROP):
            pruned = float(lm_loss(setup.lm.model, rows))
        full = float(lm_loss(setup.lm.model, rows))
    assert result.losses[0] == pytest.approx(pruned, abs=1e-6)
    assert abs(result.losses[0] - full) > 1e-3


def test_healing_called_inside_inference_mode_still_trains() -> None:
    setup = _setup(cache=False)
    with torch.inference_mode():  # as a caller's scoring thread may be
        result = heal(setup, DROP, HealConfig(steps=2, batch_size=4, seq_len=16, lr=1e-2))
    assert result.complete and any(v.abs().sum() > 0 for k, v in result.state.items() if "lora_B" in k)


def test_the_task_loss_is_the_scorers_answer_cross_entropy_under_the_mask() -> None:
    setup = _setup(cache=False)
    config = HealConfig(objective="task", steps=1, batch_size=6, lr=0.0)
    result = heal(setup, DROP, config)
    data = training_data(setup, DROP, config)
    by_id = {ex.id: ex for ex in setup.ds.splits["train"]}
    examples = [by_id[data.example_ids[i]] for i in data.batch(0, 6, config.seed)]
    builder = setup.builder(DROP)
    demos = {ex.id for ex in builder.demos}
    assert demos and not demos & {ex.id for ex in examples}  # the prompt's demonstrations are left out

    def cross_entropy(drop: tuple[int, ...]) -> float:
        logits = score_examples(setup.lm, builder, examples, drop).logits  # prefix-cached, as in evaluation
        probs = cal.softmax(logits)
        return float(-np.mean(np.log(probs[np.arange(len(examples)), [ex.label for ex in examples]])))

    assert result.losses[0] == pytest.approx(cross_entropy(DROP), abs=1e-5)
    assert abs(result.losses[0] - cross_entropy(())) > 1e-4
    assert config.note is not None and "tunes the model to this task" in config.note
    assert HealConfig().note is None


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_zero_learning_rate_heals_to_exactly_the_pruned_model(family: str, fresh_results) -> None:
    setup = _setup(family, cache=False)
    result = heal(setup, DROP, HealConfig(steps=3, batch_size=4, seq_len=16, lr=0.0))
    healed = healed_model(setup.lm, result)
    assert healed.name.startswith(f"{setup.lm.name}+heal-") and healed.model is not setup.lm.model
    config = EvalConfig(n=20, val_n=0, drop=DROP)
    pruned = evaluate(setup, config)
    again = evaluate(Setup(healed, setup.ds, setup.prompt), config)
    assert np.array_equal(pruned.logits, again.logits)
    full = evaluate(setup, EvalConfig(n=20, val_n=0))
    assert not np.array_equal(full.logits, pruned.logits)


def test_healing_trains_and_leaves_the_shared_model_untouched(fresh_results) -> None:
    setup = _setup()
    before = {k: v.clone() for k, v in setup.lm.model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in setup.lm.model.named_parameters()}
    result = heal(setup, DROP, HealConfig(steps=8, batch_size=4, seq_len=16, lr=3e-2))
    assert result.complete and not result.cached and len(result.losses) == 8
    first, last = result.loss_change(3)
    assert last < first  # it learns
    after = setup.lm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in setup.lm.model.parameters())
    assert flags == {n: p.requires_grad for n, p in setup.lm.model.named_parameters()}
    healed = healed_model(setup.lm, result)
    assert healed is healed_model(setup.lm, result)  # one shared copy
    assert healed.fingerprint != setup.lm.fingerprint
    with torch.no_grad(), dropped_attention(setup.lm.model, DROP), dropped_attention(healed.model, DROP):
        ids = torch.tensor([[5, 6, 7, 8]])
        assert not torch.allclose(setup.lm.model(input_ids=ids).logits, healed.model(input_ids=ids).logits)


def test_a_second_run_is_a_cache_hit_that_trains_nothing(fresh_results, monkeypatch) -> None:
    setup = _setup()
    first = heal(setup, DROP, SMALL)
    assert (first.path / ADAPTERS).exists() and not (first.path / CHECKPOINT).exists()

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(healing, "_train", no_training)
    second = heal(setup, DROP, SMALL)
    assert second.cached and second.complete and second.losses == first.losses
    assert second.targets == first.targets == len(adapter_targets(setup.lm.model, DROP)) == 4 * 7 - 2 * 4
    assert second.trainable == first.trainable == sum(t.numel() for t in first.state.values())
    assert second.state.keys() == first.state.keys()
    assert all(torch.equal(second.state[k], first.state[k]) for k in first.state)
    assert cached_steps(setup, DROP, SMALL) == SMALL.steps
    for other in (HealConfig(steps=4, batch_size=4, seq_len=16, lr=2e-2), HealConfig(steps=4, batch_size=4,
                  seq_len=16, lr=1e-2, seed=1)):
        assert heal_key(setup, DROP, other) != first.key
    assert heal_key(setup, (1,), SMALL) != first.key


def test_a_stopped_or_interrupted_run_resumes_to_what_an_uninterrupted_run_gives(fresh_results) -> None:
    config = HealConfig(steps=12, batch_size=4, seq_len=16, lr=1e-2)
    straight = heal(_setup(cache=False), DROP, config)
    setup = _setup()
    asked = []
    stopped = heal(setup, DROP, config, stop=lambda: asked.append(1) or len(asked) > 4)
    assert not stopped.complete and stopped.steps_done == 4 and cached_steps(setup, DROP, config) == 4
    with pytest.raises(UserError, match="stopped at step 4 of 12"):
        healed_model(setup.lm, stopped)

    def interrupt(step) -> None:  # Ctrl-C after step 11: the checkpoint of step 10 stays
        if step.step == 11:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        heal(setup, DROP, config, progress=interrupt)
    assert cached_steps(setup, DROP, config) == 10
    steps = []
    resumed = heal(setup, DROP, config, progress=steps.append)
    assert resumed.resumed_from == 10 and resumed.complete and [s.step for s in steps] == [11, 12]
    np.testing.assert_allclose(resumed.losses, straight.losses, rtol=0, atol=1e-6)
    for k, v in straight.state.items():
        torch.testing.assert_close(resumed.state[k], v, rtol=0, atol=1e-6)


def test_damaged_files_are_a_miss_not_a_crash(fresh_results) -> None:
    setup = _setup()
    config = HealConfig(steps=12, batch_size=4, seq_len=16, lr=1e-2)
    folder = healing.adapters_root() / heal_key(setup, DROP, config)
    folder.mkdir(parents=True)
    (folder / CHECKPOINT).write_bytes(b"not a safetensors file")
    result = heal(setup, DROP, config)
    assert result.complete and result.resumed_from == 0 and not result.cached
    (folder / ADAPTERS).write_bytes(b"\x00" * 40)
    again = heal(setup, DROP, config)
    assert not again.cached and again.complete
    np.testing.assert_allclose(again.losses, result.losses, atol=1e-6)


def test_running_out_of_memory_halves_the_batch_and_keeps_the_update(monkeypatch) -> None:
    config = HealConfig(steps=3, batch_size=8, seq_len=16, lr=1e-2)
    plain = heal(_setup(cache=False), DROP, config)
    real = healing.lm_loss

    def small_memory(model, rows):
        if len(rows) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, rows)

    monkeypatch.setattr(healing, "lm_loss", small_memory)
    halved = heal(_setup(cache=False), DROP, config)
    assert halved.micro_batch == 2 and plain.micro_batch == 8
    np.testing.assert_allclose(halved.losses, plain.losses, atol=1e-5)
    # the same update up to rounding (Adam divides by the gradient's own size, so rounding differences of
    # near-zero gradients grow to about 1e-5; a different update would differ by the order of lr = 1e-2)
    for k, v in plain.state.items():
        torch.testing.assert_close(halved.state[k], v, rtol=0, atol=1e-4)


@pytest.mark.parametrize(("drop", "config", "message"), [
    ((), SMALL, "drop at least one attention layer"),
    (DROP, HealConfig(steps=0), "steps must be a whole number of at least 1"),
    (DROP, HealConfig(rank=0), "rank must be a whole number of at least 1"),
    (DROP, HealConfig(batch_size=0), "batch size must be"),
    (DROP, HealConfig(lr=-1e-3), "learning rate must be 0 or more"),
    (DROP, HealConfig(objective="sft"), "unknown healing objective 'sft'; use lm"),
    (DROP, HealConfig(objective="task", text_file="x.txt"), "a text file is unlabelled text, for the lm objective"),
    (DROP, HealConfig(steps=1000, batch_size=8, seq_len=16), "healing reads its text at most once"),
    (DROP, HealConfig(objective="task", steps=100, batch_size=8), "need 800 labelled examples"),
    (DROP, HealConfig(seq_len=4096), "longer than this model's context of 128 tokens"),
])
def test_bad_requests_are_refused_before_any_training(drop, config, message, monkeypatch, fresh_results) -> None:
    def no_adapters(*args, **kwargs):
        raise AssertionError("started training")

    monkeypatch.setattr(healing, "add_adapters", no_adapters)
    with pytest.raises(UserError, match=message):
        heal(_setup(), drop, config)


def test_an_encoder_and_a_small_text_file_are_refused(tmp_path, monkeypatch, fresh_results) -> None:
    monkeypatch.setattr(healing, "add_adapters", lambda *a, **k: pytest.fail("started training"))
    bert = Setup(tiny_bert_loaded(), dataset_from_rows(ROWS, "tiny"))
    for objective in ("lm", "task"):
        with pytest.raises(UserError, match="is an encoder classifier.*--refit-head"):
            heal(bert, DROP, HealConfig(objective=objective))
    small = tmp_path / "text.txt"
    small.write_text("a short line\n\nanother one\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"2 lines of '.*text.txt' give \d+ tokens"):
        heal(_setup(), DROP, HealConfig(steps=5, batch_size=4, seq_len=16, text_file=str(small)))
    with pytest.raises(UserError, match="does not exist"):
        heal(_setup(), DROP, HealConfig(text_file=str(tmp_path / "missing.txt")))


def test_a_text_file_trains_and_its_content_keys_the_cache(tmp_path, fresh_results) -> None:
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(r["text"] for r in ROWS * 2), encoding="utf-8")
    setup = _setup()
    config = HealConfig(steps=3, batch_size=4, seq_len=16, text_file=str(text))
    result = heal(setup, DROP, config)
    assert result.complete and "lines of" in result.data
    key = heal_key(setup, DROP, config)
    assert key != heal_key(setup, DROP, HealConfig(steps=3, batch_size=4, seq_len=16))
    text.write_text(text.read_text(encoding="utf-8") + "\none more line", encoding="utf-8")
    assert heal_key(setup, DROP, config) != key


def test_the_three_way_comparison_pairs_the_same_examples(fresh_results) -> None:
    setup = _setup()
    result = heal(setup, DROP, SMALL)
    c = compare_healed(setup, result, EvalConfig(n=20, val_n=0))
    assert c.pruned.dropped_attention_layers == c.healed.dropped_attention_layers == list(DROP)
    assert c.full.dropped_attention_layers == []
    stats = c.stats(1000, 0)
    for (a, b), s in stats.items():
        assert s.difference["accuracy"].value == pytest.approx(
            c.result(b).metrics.accuracy - c.result(a).metrics.accuracy)
        flips = (c.result(a).probs.argmax(1) == c.full.labels) & (c.result(b).probs.argmax(1) != c.full.labels)
        assert s.mcnemar.right_to_wrong == int(flips.sum())
    out = c.as_json(1000, 0)
    assert set(out["changes"]) == {"pruned_vs_full", "healed_vs_full", "healed_vs_pruned"}
    assert out["healed"]["ece"]["value"] == pytest.approx(c.healed.metrics.ece)
    assert list(c.values_table(stats).columns[::2]) == ["full", "pruned", "healed"]


def test_the_heal_command_writes_the_three_way_comparison_and_is_cached_the_second_time(tmp_path, capsys,
                                                                                        fresh_results) -> None:
    import csv
    import json

    from helpers.cli import run_cli

    lm = tiny_loaded("llama")
    folder = tmp_path / "tiny-llama"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    data = tmp_path / "tiny.csv"
    with data.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(ROWS)
    argv = ["heal", "--model", str(folder), "--dataset", str(data), "--drop-attn", "1,2", "--steps", "3",
            "--batch-size", "4", "--seq-len", "16", "--n", "20", "--val-n", "0"]
    code, out, err = run_cli(capsys, *argv, "--json", "-")
    assert code == 0, err
    result = json.loads(out)
    assert result["dropped_attention_layers"] == [1, 2] and result["n"] == 20
    assert set(result["changes"]) == {"pruned_vs_full", "healed_vs_full", "healed_vs_pruned"}
    assert result["heal"]["complete"] and not result["heal"]["cached"] and result["heal"]["steps_done"] == 3
    assert result["healed_model"].startswith("tiny-llama+heal-")
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert "from the cache" in out and "attention dropped at [1, 2]" in out
    assert "flips, healed against pruned:" in out and "ECE" in out
    code, out, err = run_cli(capsys, *argv, "--objective", "task")
    assert code == 0 and "tunes the model to this task" in out and "tunes the model to this task" in err
    code, _, err = run_cli(capsys, *argv[:5], "--lr", "-1")
    assert code == 2 and err.startswith("error: the learning rate must be 0 or more")
    code, _, err = run_cli(capsys, *argv[:5], "--steps", "2")
    assert code == 2 and "drop at least one attention layer" in err


@pytest.mark.slow
def test_on_the_default_model_a_stopped_run_resumes_and_zero_lr_scores_like_the_pruned_model(fresh_results) -> None:
    from core.model.loading import load_model
    from core.task.data import load_dataset

    setup = Setup(load_model(), load_dataset(), cache=ResultCache())
    drop = (25, 26)
    assert len(adapter_targets(setup.lm.model, drop)) == 30 * 7 - 2 * 4  # q k v o gate up down; MLP only where dropped
    config = HealConfig(steps=3, batch_size=2, seq_len=32, lr=0.0)
    asked = []
    stopped = heal(setup, drop, config, stop=lambda: asked.append(1) or len(asked) > 1)
    assert stopped.steps_done == 1 and not stopped.complete
    result = heal(setup, drop, config)
    assert result.complete and result.resumed_from == 1 and len(result.losses) == 3
    healed = healed_model(setup.lm, result)
    eval_config = EvalConfig(n=8, val_n=0, drop=drop)
    pruned = evaluate(setup, eval_config)
    again = evaluate(Setup(healed, setup.ds, cache=setup.cache), eval_config)
    assert not again.cached and np.array_equal(pruned.logits, again.logits)
