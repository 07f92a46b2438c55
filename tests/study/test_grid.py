"""The study grid on tiny models saved as folders: bad specs, resuming, and Ray against the local engine."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest
from helpers.tiny_models import tiny_model, tiny_tokenizer

from core.cache import ResultCache
from core.errors import UserError
from core.study.grid import COLUMNS_OUT, RUN_DEPENDENT, GridSpec, plan, run_study
from core.task.prompts import PromptConfig

TEXTS = [("the film is good", "positive"), ("a bad and boring movie", "negative"), ("I loved it", "positive"),
         ("terrible plot, awful dialogue", "negative"), ("wonderful acting", "positive"), ("bad", "negative")]


@pytest.fixture(scope="module")
def grid_inputs(tmp_path_factory) -> dict[str, str]:
    """Two tiny models of different families as model folders, and a small CSV dataset."""
    root = tmp_path_factory.mktemp("grid")
    paths = {}
    for family in ("llama", "gpt2"):
        folder = root / f"tiny-{family}"
        tiny_model(family).save_pretrained(folder)
        tiny_tokenizer().save_pretrained(folder)
        paths[family] = str(folder)
    data = root / "reviews.csv"
    with open(data, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(12):
            for text, label in TEXTS:
                writer.writerow([f"{text} {i}", label])
    paths["data"] = str(data)
    return paths


def _spec(inputs: dict[str, str], **changes) -> GridSpec:
    base = dict(models=(inputs["llama"], inputs["gpt2"]), datasets=(inputs["data"],),
                strategies=("similarity", "last-to-first"), max_drop=2, n=8, val_n=4,
                prompt=PromptConfig(style="zero-shot"))
    return GridSpec(**{**base, **changes})


def _values(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns=list(RUN_DEPENDENT)).sort_values(["model", "strategy", "dropped"]).reset_index(drop=True)


@pytest.mark.parametrize(("change", "message"), [
    ({"models": ("no-such-model",)}, "unknown model 'no-such-model'"),
    ({"datasets": ("no-such-data",)}, "unknown dataset"),
    ({"strategies": ("similarity", "best")}, "unknown strategy 'best'; use similarity, block-influence"),
    ({"faith_n": 2, "explainers": ("lime", "magic")}, "unknown explainer 'magic'; use "),
    ({"max_drop": 5}, "max_drop 5 is more than the 4 attention layers"),
    ({"strategies": ("similarity", "similarity")}, "named twice"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
    ({"alpha": 1.5}, "alpha must be strictly between 0 and 1"),
    ({"method": "lacs"}, "unknown conformal method 'lacs'"),
])
def test_a_bad_grid_is_refused_before_any_model_loads(grid_inputs, monkeypatch, change, message) -> None:
    import core.model.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(UserError, match=message):
        run_study(_spec(grid_inputs, **change), engine="local")


def test_a_points_key_holds_the_prediction_sets_settings(grid_inputs) -> None:
    from dataclasses import replace

    checked = plan(_spec(grid_inputs))
    point = checked.points[1]
    keys = {plan(replace(checked.spec, **change)).point_key(point) for change in
            ({}, {"alpha": 0.2}, {"method": "aps"})}
    assert len(keys) == 3 and checked.point_key(point) in keys
    config = plan(replace(checked.spec, alpha=0.2, method="raps")).point_config(None)
    assert (config.alpha, config.method) == (0.2, "raps")


def test_an_unknown_engine_is_refused(grid_inputs) -> None:
    with pytest.raises(UserError, match="unknown engine 'spark'; use local, ray"):
        plan(_spec(grid_inputs), engine="spark")


def test_the_local_grid_writes_every_point_once_and_resumes_after_an_interruption(
        grid_inputs, tmp_path, monkeypatch) -> None:
    import core.model.loading as loading
    import core.study.sweep as sweep

    cache = ResultCache(tmp_path / "cache")
    spec = _spec(grid_inputs)
    evaluated: list[tuple] = []
    loads: list[str] = []
    real_point, real_load = sweep.evaluate_point, loading.load_model
    monkeypatch.setattr(sweep, "evaluate_point", lambda setup, drop, config, **kw: evaluated.append(tuple(drop))
                        or real_point(setup, drop, config, **kw))
    monkeypatch.setattr(loading, "load_model", lambda name, *a, **k: loads.append(name) or real_load(name, *a, **k))

    def stop_after_four(point, engine) -> None:
        if len(evaluated) == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(spec, tmp_path / "out", cache=cache, on_point=stop_after_four)
    assert len(evaluated) == 4 and loads == [grid_inputs["llama"]]  # the first model's cells first
    evaluated.clear()
    result = run_study(spec, tmp_path / "out", cache=cache)
    assert (result.computed, result.cached, result.failed) == (8, 4, [])
    assert len(evaluated) == 8
    assert loads.count(grid_inputs["gpt2"]) == 1  # once for all of its points
    table = result.table
    assert list(table.columns) == COLUMNS_OUT and len(table) == 12
    assert not table.duplicated(["model", "dataset", "strategy", "explainer", "dropped"]).any()
    assert table.groupby("model").size().tolist() == [6, 6]
    last = table[table["strategy"] == "last-to-first"]
    assert set(last["layers"]) == {"none", "3", "2,3"}  # the strategy's order, first k layers
    # the full model is the same point under every strategy
    full = table[table["dropped"] == 0].set_index(["model", "strategy"])["accuracy"].unstack()
    assert (full["similarity"] == full["last-to-first"]).all()

    evaluated.clear()
    loads.clear()
    again = run_study(spec, tmp_path / "out", cache=cache)
    assert (again.computed, again.cached) == (0, 12) and evaluated == [] and loads == []
    assert again.table["cached"].all()
    pd.testing.assert_frame_equal(_values(again.table), _values(table))

    out = tmp_path / "out"
    run = json.loads((out / "run.json").read_text())
    assert (run["points"], run["computed"], run["cached"]) == (12, 0, 12) and run["engine"]["workers"] == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "results.parquet"), again.table)
    assert len(pd.read_csv(out / "results.csv")) == 12
    page = (out / "report.html").read_text()
    assert "<script src=" not in page.replace('<script src="data:', "") and len(page) > 1_000_000  # offline
    # the trade-off curves and the prediction-set and abstention curves
    assert page.count("Plotly.newPlot") == 2 and "reviews.csv" in page and "last-to-first" in page


def test_the_progress_counts_a_greedy_orders_candidate_masks_as_they_are_tried(grid_inputs, tmp_path) -> None:
    from core.study.strategies import candidate_masks

    spec = _spec(grid_inputs, models=(grid_inputs["llama"],), strategies=("greedy-divergence",), max_drop=2)
    seen: list[tuple[int, int]] = []
    result = run_study(spec, cache=ResultCache(tmp_path), progress=lambda done, total: seen.append((done, total)))
    searched = candidate_masks(4, 2)  # 4 layers, 2 greedy steps: 4 + 3 candidate masks
    assert searched == 7 and result.computed == 3
    assert {total for _, total in seen} == {3 + searched}
    dones = [done for done, _ in seen]
    assert dones == sorted(dones) and dones[-1] == 3 + searched
    assert set(range(1, searched + 1)) <= set(dones)  # the count moves during the search, one mask at a time
    again: list[tuple[int, int]] = []
    run_study(spec, cache=ResultCache(tmp_path), progress=lambda done, total: again.append((done, total)))
    assert again == [(3, 3)]  # cached points, and the order is cached too: no search to count


def test_later_points_of_a_cell_resume_their_explanations_from_states_the_earlier_ones_kept(
        grid_inputs, tmp_path) -> None:
    from core.model.states import STATES

    spec = _spec(grid_inputs, models=(grid_inputs["llama"],), strategies=("last-to-first",), max_drop=2,
                 faith_n=2, explainers=("occlusion",))
    STATES.hits = 0
    table = run_study(spec, cache=ResultCache(tmp_path / "on")).table
    assert STATES.hits > 0
    STATES.enabled = False
    try:
        reference = run_study(spec, cache=ResultCache(tmp_path / "off")).table
    finally:
        STATES.enabled = True
    pd.testing.assert_frame_equal(_values(table), _values(reference), check_exact=False, rtol=1e-4, atol=1e-6)


def test_faithfulness_points_carry_one_row_per_explainer(grid_inputs, tmp_path) -> None:
    spec = _spec(grid_inputs, models=(grid_inputs["llama"],), strategies=("similarity",), max_drop=1,
                 faith_n=2, explainers=("occlusion", "gradient-x-input"))
    table = run_study(spec, cache=ResultCache(tmp_path)).table
    assert list(table["explainer"]) == ["occlusion", "occlusion", "gradient-x-input", "gradient-x-input"]
    assert table[["comprehensiveness", "sufficiency", "comprehensiveness_change_lo"]].notna().all().all()
    # accuracy does not depend on the explainer
    assert table.groupby("dropped")["accuracy"].nunique().eq(1).all()


@pytest.mark.slow
def test_ray_gives_the_local_rows_and_survives_a_killed_worker(grid_inputs, tmp_path) -> None:
    import ray
    import torch

    spec = _spec(grid_inputs)
    # one thread, as each actor has (Ray gives it one CPU): the same sums in the same order, so the same
    # probabilities to the bit; the calibration errors' inverted intervals are not continuous at fp32
    # rounding (a confidence moving across a bin edge changes the simulated hypotheses)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = run_study(spec, cache=ResultCache(tmp_path / "local")).table
    finally:
        torch.set_num_threads(threads)
    killed: list[int] = []

    def kill_a_worker(point, engine) -> None:
        if not killed:
            actor = engine.actors[0]
            killed.append(ray.get(actor.pid.remote()))
            ray.kill(actor, no_restart=False)  # Ray restarts it and retries its points

    result = run_study(spec, tmp_path / "out", engine="ray", workers=2, cache=ResultCache(tmp_path / "ray"),
                       on_point=kill_a_worker)
    assert killed and result.failed == [] and (result.computed, result.cached) == (12, 0)
    assert not result.table.duplicated(["model", "strategy", "dropped"]).any()
    # the same rows, the same values
    pd.testing.assert_frame_equal(_values(result.table), _values(local), check_exact=False, rtol=1e-9, atol=1e-12)
    assert result.table["accuracy"].tolist() == local["accuracy"].tolist()
    run = json.loads((Path(tmp_path) / "out" / "run.json").read_text())
    assert run["engine"]["engine"] == "ray" and run["engine"]["workers"] == 2
    assert not ray.is_initialized()  # the runtime the study started is shut down


def test_the_study_command_names_what_is_allowed(tmp_path, capsys) -> None:
    from core.cli import main

    assert main(["study", "--strategies", "similarity,best", "--out", str(tmp_path)]) == 2
    assert "unknown strategy 'best'; use similarity" in capsys.readouterr().err
    assert main(["study", "--engine", "ray", "--workers", "0", "--out", str(tmp_path)]) == 2
    assert "at least 1" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing started, nothing written
