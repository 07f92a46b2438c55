"""--alpha and --conformal-method on compare, evaluate, sweep and study, in-process on a tiny model saved as a folder:
what each prints and writes, and the refusals (exit 2, no traceback)."""

from __future__ import annotations

import csv
import json

import pandas as pd
import pytest
from helpers.cli import run_cli
from helpers.tiny_models import tiny_loaded

from core.study.sweep import SET_COLUMNS

TEXTS = [("the film is good", "positive"), ("a bad and boring movie", "negative"), ("I loved it", "positive"),
         ("terrible plot, awful dialogue", "negative"), ("wonderful acting", "positive"), ("bad", "negative")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> list[str]:
    """``--model`` and ``--dataset`` of a tiny llama folder and a CSV of 60 rows (12 validation, 12 test)."""
    root = tmp_path_factory.mktemp("sets-cli")
    lm = tiny_loaded("llama")
    lm.model.save_pretrained(root / "tiny-llama")
    lm.tokenizer.save_pretrained(root / "tiny-llama")
    with open(root / "reviews.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows((f"{text} {i}", label) for i in range(10) for text, label in TEXTS)
    return ["--model", str(root / "tiny-llama"), "--dataset", str(root / "reviews.csv"), "--prompt", "zero-shot"]


def test_compare_prints_and_writes_both_models_sets_and_abstention_with_paired_verdicts(tiny, capsys,
                                                                                        fresh_results) -> None:
    argv = ["compare", *tiny, "--drop-attn", "1,2", "--n", "12", "--alpha", "0.1"]
    code, out, err = run_cli(capsys, *argv, "--json", "-")
    assert code == 0, err
    got = json.loads(out)
    sets, sel = got["prediction_sets"], got["selective"]
    assert (sets["alpha"], sets["method"], sets["calibration_n"]) == (0.1, "lac", 12)
    assert set(sets["full"]) == set(sets["pruned"]) == set(sets["difference"]) >= {"coverage", "set_size"}
    assert set(sets["qhat"]) == {"full", "pruned"} and sets["bootstrap"]["resamples"] == 1000
    assert {"aurc", "accuracy_at_80"} <= set(sel["difference"]) and "beyond_noise" in sel["difference"]["aurc"]
    assert "prediction_sets_unavailable" not in got and got["difference"]["accuracy"]  # the other blocks stay
    code, out, err = run_cli(capsys, *argv, "--conformal-method", "aps")
    assert code == 0, err
    assert "Prediction sets (alpha 0.1, APS, calibrated on 12 validation examples):" in out
    assert "Abstention (answering only the most confident examples" in out
    for title in ("set coverage", "mean set size", "AURC", "accuracy at 80% coverage"):
        line = next(x for x in out.splitlines() if x.startswith(title))
        assert "[" in line and "noise" in line, line  # each side's interval, the paired interval and a verdict
    assert "thresholds (qhat, from validation): full" in out and "recalibrated" in out


def test_without_validation_compare_says_why_and_still_reports_abstention(tiny, capsys, fresh_results) -> None:
    code, out, err = run_cli(capsys, "compare", *tiny, "--drop-attn", "1", "--n", "12", "--val-n", "0",
                             "--json", "-")
    assert code == 0, err
    got = json.loads(out)
    assert got["prediction_sets"] is None and "--val-n 100" in got["prediction_sets_unavailable"]
    assert got["selective"]["full"]["aurc"]["value"] >= 0
    code, out, err = run_cli(capsys, "compare", *tiny, "--drop-attn", "1", "--n", "12", "--val-n", "0")
    assert code == 0 and "Prediction sets: none, prediction sets are calibrated on validation examples" in out
    assert "AURC" in out


@pytest.mark.parametrize(("options", "message"), [
    (["--alpha", "0"], "alpha must be strictly between 0 and 1 (got 0.0)"),
    (["--alpha", "1.2"], "strictly between 0 and 1"),
    (["--alpha", "0.05", "--val-n", "12"], "12 calibration example(s) are too few for alpha = 0.05"),
])
@pytest.mark.parametrize("command", ["compare", "evaluate", "sweep", "study"])
def test_an_alpha_the_validation_examples_cannot_give_is_refused_before_any_model_loads(
        command, options, message, tiny, tmp_path, capsys, monkeypatch, fresh_results) -> None:
    import core.model.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    out = ["--out", str(tmp_path / ("s.csv" if command == "sweep" else "study"))] if command in ("sweep",
                                                                                                 "study") else []
    data = tiny if command != "study" else ["--models", tiny[1], "--datasets", tiny[3]]
    code, _, err = run_cli(capsys, command, *data, *options, *out)
    assert code == 2 and message in err and "Traceback" not in err


def test_an_unknown_method_is_refused_by_the_parser(tiny, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        run_cli(capsys, "compare", *tiny, "--conformal-method", "lacs")
    assert exit_.value.code == 2 and "invalid choice: 'lacs'" in capsys.readouterr().err


def test_evaluate_reports_the_one_models_sets_with_intervals(tiny, capsys, fresh_results) -> None:
    argv = ["evaluate", *tiny, "--n", "12", "--alpha", "0.2", "--conformal-method", "raps"]
    code, out, err = run_cli(capsys, *argv, "--json", "-")
    assert code == 0, err
    got = json.loads(out)
    sets = got["prediction_sets"]
    assert (sets["alpha"], sets["method"], sets["calibration_n"]) == (0.2, "raps", 12)
    lo, hi = sets["intervals"]["coverage"]["ci"]
    assert lo <= sets["intervals"]["coverage"]["value"] <= hi and sets["size_coverage"]
    assert set(got["selective"]["intervals"]) >= {"aurc", "eaurc", "coverage_at_risk"}
    code, out, _ = run_cli(capsys, *argv)
    assert "Prediction sets (alpha 0.2, RAPS, calibrated on 12 validation examples): set coverage " in out
    assert "Abstention (answering only" in out and "AURC " in out


def test_sweep_and_study_write_the_set_columns_and_the_report_draws_them(tiny, tmp_path, capsys,
                                                                         fresh_results) -> None:
    sweep_csv = tmp_path / "sweep.csv"
    code, _, err = run_cli(capsys, "sweep", *tiny, "--strategy", "last-to-first", "--max-drop", "1", "--n", "12",
                           "--faith-n", "0", "--alpha", "0.2", "--out", str(sweep_csv))
    assert code == 0, err
    table = pd.read_csv(sweep_csv)
    assert table[SET_COLUMNS].notna().all().all() and len(table) == 2
    assert list(table["set_size_change"])[0] == 0 and "accuracy_at_80_change_p" in table
    settings = json.loads((tmp_path / "sweep.csv.json").read_text())
    assert (settings["alpha"], settings["conformal_method"]) == (0.2, "lac")
    code, out, err = run_cli(capsys, "report", str(sweep_csv), "--out", str(tmp_path / "r.html"))
    page = (tmp_path / "r.html").read_text()
    assert code == 0 and "1 - alpha = 0.8" in page and "mean set size (lower is better)" in page
    code, out, err = run_cli(capsys, "study", "--models", tiny[1], "--datasets", tiny[3], "--prompt", "zero-shot",
                             "--strategies", "last-to-first", "--max-drop", "1", "--n", "12", "--alpha", "0.2",
                             "--conformal-method", "aps", "--out", str(tmp_path / "study"))
    assert code == 0, err
    results = pd.read_csv(tmp_path / "study" / "results.csv")
    assert results[["coverage", "set_size", "aurc", "coverage_lo", "set_size_change_p"]].notna().all().all()
    run = json.loads((tmp_path / "study" / "run.json").read_text())
    assert (run["settings"]["alpha"], run["settings"]["method"]) == (0.2, "aps")
    assert "set_size" in out.splitlines()[0]
    assert "1 - alpha = 0.8" in (tmp_path / "study" / "report.html").read_text()
