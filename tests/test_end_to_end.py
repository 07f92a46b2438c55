"""End to end on the real default model (SmolLM2-135M-Instruct) and data, through the CLI."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.cli import run_cli

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parent.parent



def test_evaluate_json_predictions_and_cache(fresh_results, capsys, tmp_path) -> None:
    preds = tmp_path / "p.csv"
    code, out, _ = run_cli(capsys, "evaluate", "--n", "40", "--val-n", "20", "--json", "-",
                        "--predictions", str(preds))
    assert code == 0
    first = json.loads(out)
    for field in ("model", "dataset", "n", "dropped_attention_layers", "accuracy", "ece", "adaptive_ece",
                  "mce", "brier", "nll", "seconds", "cached", "temperature"):
        assert field in first
    assert first["n"] == 40 and first["cached"] is False and first["accuracy"] > 0.6
    with open(preds, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40
    assert {"id", "text", "label", "prediction", "confidence", "p_negative", "p_positive"} <= set(rows[0])
    acc = np.mean([r["label"] == r["prediction"] for r in rows])
    assert acc == pytest.approx(first["accuracy"])
    code, out, _ = run_cli(capsys, "evaluate", "--n", "40", "--val-n", "20", "--json", "-")
    again = json.loads(out)
    assert again["cached"] is True and again["seconds"] < 1.0 and again["ece"] == first["ece"]


def test_dropping_layers_changes_answers_and_cache_agrees_with_no_cache(fresh_results) -> None:
    from core import EvalConfig, Setup, evaluate, load_dataset, load_model
    from core.task.prompts import PromptBuilder, PromptConfig
    from core.task.scoring import score_examples

    lm, ds = load_model(), load_dataset()
    full = evaluate(Setup(lm, ds), EvalConfig(n=24, val_n=0))
    pruned = evaluate(Setup(lm, ds), EvalConfig(n=24, val_n=0, drop=(0, 25, 26)))
    assert not np.allclose(full.probs, pruned.probs, atol=1e-3)
    builder = PromptBuilder(lm.tokenizer, ds, PromptConfig(), lm.has_chat_template, lm.max_positions)
    examples = full.examples[:12]
    cached = score_examples(lm, builder, examples, (0, 1, 25))
    uncached = score_examples(lm, builder, examples, (0, 1, 25), use_prefix_cache=False)
    np.testing.assert_allclose(cached.logits, uncached.logits, atol=1e-3)


def test_scores_json_lists_every_layer(fresh_results, capsys) -> None:
    code, out, _ = run_cli(capsys, "scores", "--calibration-n", "32", "--json", "-")
    got = json.loads(out)
    assert code == 0 and len(got["scores"]) == 30 and sorted(got["order"]) == list(range(30))
    assert got["scores"][got["order"][0]] == min(got["scores"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["evaluate", "--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["evaluate", "--model", "./missing/folder"], "does not exist"),
        (["evaluate", "--drop-attn", "30"], "out of range"),
        (["evaluate", "--drop-attn", "-1"], "negative"),
        (["evaluate", "--drop-attn", "3,3"], "listed twice"),
        (["evaluate", "--dataset", "nope"], "unknown dataset"),
        (["evaluate", "--n", "0"], "at least 1"),
    ],
)
def test_bad_input_gets_a_clear_message(fresh_results, capsys, argv: list[str], message: str) -> None:
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and message in err and "Traceback" not in err


def test_own_csv_errors_warnings_and_non_ascii(fresh_results, capsys, tmp_path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("review,stars\ngood,5\n", encoding="utf-8")
    code, _, err = run_cli(capsys, "evaluate", "--dataset", str(bad))
    assert code == 2 and "no column 'text', 'label'" in err
    mine = tmp_path / "mine.csv"
    rows = [("Ce film était génial, vraiment 😀 " * 3, "positive"), ("Schrecklich, nie wieder.", "negative")] * 10
    with open(mine, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    code, out, err = run_cli(capsys, "evaluate", "--dataset", str(mine), "--n", "50", "--max-input-tokens", "8",
                          "--val-n", "0", "--json", "-")
    assert code == 0, err
    got = json.loads(out)
    assert got["n"] == 4  # the test split of 20 rows
    assert "larger than the test split" in err and "truncated" in err


def test_dropping_every_layer_is_flagged(fresh_results, capsys) -> None:
    code, out, err = run_cli(capsys, "evaluate", "--n", "8", "--val-n", "0", "--drop-attn",
                          ",".join(map(str, range(30))), "--json", "-")
    assert code == 0 and json.loads(out)["all_attention_dropped"] is True and "every attention layer" in err


def test_module_entry_point_exits_non_zero_without_traceback() -> None:
    proc = subprocess.run([sys.executable, "-m", "core", "evaluate", "--drop-attn", "x"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "error: attention layer 'x' is not an integer" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_compare_json_predictions_and_self_comparison(fresh_results_with_importance, capsys, tmp_path) -> None:
    preds = tmp_path / "both.csv"
    code, out, err = run_cli(capsys, "compare", "--n", "40", "--val-n", "20", "--drop-attn", "25,26,29",
                             "--json", "-", "--predictions", str(preds))
    assert code == 0, err
    got = json.loads(out)
    assert got["n"] == 40 and got["dropped_attention_layers"] == [25, 26, 29]
    for side in ("full", "pruned"):
        for key in ("accuracy", "ece", "smooth_ece", "brier", "nll"):
            lo, hi = got[side][key]["ci"]
            assert lo <= got[side][key]["value"] <= hi
    assert {"right_to_wrong", "wrong_to_right", "p_value"} <= set(got["mcnemar"])
    assert "ece" in got["noise_floor"] and 0 < got["label_mass"]["full"]["value"] <= 1
    with open(preds, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40
    assert {"correct_full", "correct_pruned", "confidence_full", "confidence_pruned"} <= set(rows[0])
    code, out, _ = run_cli(capsys, "compare", "--n", "40", "--val-n", "0", "--drop-attn", "", "--json", "-")
    same = json.loads(out)
    assert all(d["value"] == 0 and d["ci"] == [0, 0] for d in same["difference"].values())
    code, out, _ = run_cli(capsys, "compare", "--n", "40", "--val-n", "0", "--drop-k", "3")
    assert code == 0 and ("within noise" in out or "beyond noise" in out)


def test_evaluate_json_has_intervals_and_warns_on_a_small_sample(fresh_results, capsys) -> None:
    code, out, err = run_cli(capsys, "evaluate", "--n", "12", "--val-n", "0", "--json", "-")
    got = json.loads(out)
    assert code == 0 and set(got["intervals"]) >= {"accuracy", "ece", "smooth_ece", "brier", "nll", "label_mass"}
    assert got["noise_floor"]["ece"]["q95"] > 0 and "95% interval runs from" in err
