"""The guided parts of the app through AppTest: the start view's tour, the ranked layer picker with its Apply
mode, and predictable sweeps (estimate, background run, applying a row to the mask)."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest
from test_app import session

pytestmark = pytest.mark.slow
LAYERS = 30


def _new_app(page: str | None = None) -> AppTest:
    """The app on 40 examples with the cheapest explainer, on ``page`` (the start view by default)."""
    at = session(page)
    at.session_state["n"] = 40
    at.session_state["explainer"] = "occlusion"
    return at.run()


def _dropped(at: AppTest) -> list[int]:
    return [i for i in range(LAYERS) if at.toggle(key=f"keep_{i}").value is False]


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.main.metric}


def _texts(elements) -> str:
    return " ".join(e.value for e in elements)


def _finish_sweep(at: AppTest) -> None:
    job = at.session_state["sweep_job"]
    assert job.wait(600) and job.error is None
    at.run()


def test_the_start_view_tours_drop_flips_and_a_small_sweep(module_results) -> None:
    at = _new_app()
    assert not at.exception and [t.value for t in at.main.title] == ["Can a pruned language model still be trusted?"]
    assert "No layer is dropped yet" in _texts(at.info) and "Do step 1 first" in _texts(at.info)
    at.button(key="tour_drop").click().run()
    # step 1: the four ★ layers (the first of the sidebar's order) are dropped and compared with the full model
    suggested = [int(t.label.split(" ")[0]) for t in at.sidebar.toggle if "★" in t.label]
    assert len(suggested) == 4 and _dropped(at) == sorted(suggested)
    assert "4 attention layers dropped: right" in _texts(at.markdown) and "McNemar" in _texts(at.markdown)
    assert "accuracy" in _metrics(at) and "change [" in _texts(at.caption)
    # step 2: the flipped predictions, counted and listed
    flips = next(m.value for m in at.markdown if "predictions flipped" in m.value)
    listed = at.dataframe[0].value
    assert f"**{len(listed)} of 40** predictions flipped" in flips and len(listed) > 0
    # step 3: the estimate, then the sweep in the background, its curves and the verdict per metric
    assert "7 masks (0 to 6 layers dropped, in the sidebar's order)" in _texts(at.markdown)
    at.button(key="tour_sweep").click().run()
    assert ("Sweep running (the small sweep of the Start view, smollm2-135m-instruct on movie-reviews, n = 40)"
            in _texts(at.markdown))
    _finish_sweep(at)
    assert not at.exception and at.get("plotly_chart")
    assert "changed beyond noise with" in _texts(at.markdown) and "**7 cached, 0 to compute**" in _texts(at.markdown)
    at.button(key="tour_explain").click().run()
    assert at.radio(key="example_filter").value == "prediction flipped by pruning"
    assert [t.value for t in at.main.title][0].startswith("Explanations")


def test_the_picker_ranks_marks_and_applies_several_changes_as_one(module_results) -> None:
    at = _new_app("views/calibration.py")
    full = _metrics(at)
    labels = [t.label for t in at.sidebar.toggle if t.key and t.key.startswith("keep_")]
    scores = [float(label.split(" · ")[1].split(" ")[0]) for label in labels[::1]]
    assert len(labels) == LAYERS and sum("★" in label for label in labels) == 4
    # two columns, filled row by row in rank order: column 0 holds ranks 0, 2, 4 ...; column 1 ranks 1, 3 ...
    ranked = [scores[i // 2] if i % 2 == 0 else scores[LAYERS // 2 + i // 2] for i in range(LAYERS)]
    assert ranked == sorted(ranked)
    at.toggle(key="apply_mode").set_value(True).run()
    at.toggle(key="keep_26").set_value(False).run()
    at.toggle(key="keep_25").set_value(False).run()
    # not evaluated yet: the page still shows the full model, and says what is pending
    assert _metrics(at) == full and "Not applied yet: drop 25,26." in _texts(at.sidebar.warning)
    assert "not applied yet" in _texts(at.main.caption)
    at.button(key="apply_button").click().run()
    assert _metrics(at)["attention layers kept"] == "28 / 30" and at.query_params["drop"] == "25,26"
    assert "Mask: 2 of 30 attention layers dropped" in _texts(at.main.caption)
    # a draft can be discarded; "drop the ★" in Apply mode only sets the draft
    at.toggle(key="keep_3").set_value(False).run()
    at.button(key="discard_button").click().run()
    assert _dropped(at) == [25, 26]
    at.selectbox(key="rank_by").set_value("last-to-first").run()
    starred = [t.key for t in at.sidebar.toggle if "★" in t.label]
    assert sorted(starred) == ["keep_26", "keep_27", "keep_28", "keep_29"]
    at.button(key="drop_k_button").click().run()
    assert _dropped(at) == [26, 27, 28, 29] and _metrics(at)["attention layers kept"] == "28 / 30"
    at.button(key="apply_button").click().run()
    assert _metrics(at)["attention layers kept"] == "26 / 30" and not at.exception


def test_a_sweep_is_estimated_runs_in_the_background_and_a_row_sets_the_mask(module_results) -> None:
    at = _new_app("views/tradeoffs.py")
    at.number_input(key="sweep_max").set_value(2)
    at.toggle(key="sweep_faith").set_value(False).run()
    assert "3 masks (0 to 2 layers dropped, in similarity order): **0 cached, 3 to compute**" in _texts(at.markdown)
    at.button(key="run_sweep").click().run()
    assert at.button(key="run_sweep").disabled and "Sweep running" in _texts(at.markdown)
    at.number_input(key="sweep_max").set_value(3).run()  # touching a widget does not abandon it
    _finish_sweep(at)
    assert "4 masks (0 to 3 layers dropped, in similarity order): **3 cached, 1 to compute**, about" in _texts(
        at.markdown)
    assert "s per mask, the median of the last 3 computed with these settings" in _texts(at.markdown)
    # the picker can now rank by this sweep's order
    ranks = at.selectbox(key="rank_by").options
    assert any(o.startswith("the last sweep's order (similarity, run here") for o in ranks), ranks
    table = next(d.value for d in at.dataframe if "accuracy: change from full" in d.value.columns)
    assert list(table["layers"]) == ["none", "26", "25,26"]
    # a row's selection is keyed by the table's content, so it never picks a row of another table
    key = next(d.key for d in at.dataframe if d.key and d.key.startswith("rows-sweep-"))
    at.session_state[key] = {"selection": {"rows": [2], "columns": [], "cells": []}}
    at.run()
    at.button(key="use_sweep_row").click().run()
    assert _dropped(at) == [25, 26] and at.query_params["drop"] == "25,26"
