"""The Prediction sets view through AppTest (no browser), on 40 examples, and the sets on the Explanations and Learn
views; the tests share one result cache (`module_results`)."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest
from test_app import _new_app, session

from core.metrics import METRICS

pytestmark = pytest.mark.slow
PAGE = "views/sets.py"
TILES = [METRICS[k].title for k in ("coverage", "set_size", "singleton_share", "aurc", "accuracy_at_80")]


def _sets_view(**query: str) -> AppTest:
    at = _new_app(**query).run()
    at.switch_page(PAGE).run()
    _no_problem(at)
    return at


def _no_problem(at: AppTest) -> None:
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def _tiles(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.main.metric}


def _link(at: AppTest) -> dict[str, str]:
    return {k: v[0] if isinstance(v, list) else v for k, v in at.query_params.items()}


def test_the_view_compares_both_models_sets_and_abstention_with_verdicts_and_a_link_carries_alpha(
        module_results) -> None:
    at = _sets_view(drop="25,26")
    tiles = _tiles(at)
    assert [t for t in tiles if t in TILES] == TILES
    captions = " ".join(c.value for c in at.caption)
    assert captions.count("change [") >= 5 and "noise" in captions and "full model" in captions
    assert len(at.main.get("plotly_chart")) == 3  # set sizes, coverage against alpha, risk against coverage
    tables = [t.value for t in at.main.dataframe]
    assert len(tables) == 2 and all("verdict" in t.columns for t in tables)
    assert set(tables[0]["verdict"]) <= {"within noise", "better, beyond noise", "worse, beyond noise"}
    assert any("alpha 0.1, LAC, calibrated on 100 validation examples" in m.value for m in at.main.markdown)
    before = tiles[METRICS["set_size"].title]
    at.slider(key="alpha").set_value(0.3).run()
    at.selectbox(key="conformal_method").set_value("aps").run()
    _no_problem(at)
    assert any("alpha 0.3, APS, calibrated on 100" in m.value for m in at.main.markdown)
    assert _tiles(at)[METRICS["set_size"].title] != before  # larger alpha: smaller sets
    link = _link(at)
    assert (link["alpha"], link["method"], link["drop"]) == ("0.3", "aps", "25,26")
    shared = session(PAGE)  # a new session: only the link
    for key, value in link.items():
        shared.query_params[key] = value
    shared.run()
    _no_problem(shared)
    assert shared.slider(key="alpha").value == pytest.approx(0.3)
    assert shared.selectbox(key="conformal_method").value == "aps"
    assert _tiles(shared) == _tiles(at)
    assert [t.value.to_csv() for t in shared.main.dataframe] == [t.value.to_csv() for t in at.main.dataframe]
    # the Explanations view shows the chosen example's set for both models at the same alpha (validation cached)
    at.switch_page("views/explanations.py").run()
    _no_problem(at)
    line = next(c.value for c in at.caption if c.value.startswith("prediction sets (alpha 0.3, APS"))
    assert "full model **{" in line and "pruned **{" in line
    at.switch_page("views/learn.py").run()
    _no_problem(at)
    assert any("prediction set" in m.value and "alpha = 0.3" in m.value for m in at.main.markdown)
    assert any("abstain" in m.value and "AURC" in m.value for m in at.main.markdown)


def test_a_link_with_an_alpha_out_of_range_is_ignored_saying_what_is_allowed(module_results) -> None:
    at = _new_app(alpha="0.7", method="magic").run()  # the link's problems are said on the first run
    warnings = " ".join(w.value for w in at.sidebar.warning)
    assert "alpha=0.7 (use a number from 0.01 to 0.5 in steps of 0.01)" in warnings
    assert "method=magic (use lac, aps, aps-randomised, raps)" in warnings
    at.switch_page(PAGE).run()
    _no_problem(at)
    assert at.slider(key="alpha").value == pytest.approx(0.1) and "alpha" not in at.query_params
    assert "No attention layer is dropped" in " ".join(i.value for i in at.main.info)


def test_too_few_validation_examples_for_alpha_show_an_error_box_not_a_traceback(module_results) -> None:
    at = _sets_view()
    at.selectbox(key="dataset_pick").set_value("own file...").run()
    rows = "".join(f"review {i} {'good' if i % 2 else 'bad'},{'positive' if i % 2 else 'negative'}\n"
                   for i in range(30))
    at.file_uploader(key="upload").upload("small.csv", ("text,label\n" + rows).encode(), "text/csv").run()
    assert not at.exception
    errors = [e.value for e in at.error]  # 6 validation examples allow alpha >= 1/7
    assert any("6 calibration example(s) are too few for alpha = 0.1" in e for e in errors), errors


def test_the_trade_offs_view_draws_a_sweeps_sets_against_the_layers_dropped(module_results) -> None:
    at = _new_app().run()
    at.switch_page("views/tradeoffs.py").run()
    table = ("dropped,layers,accuracy,ece,coverage,coverage_lo,coverage_hi,set_size,set_size_lo,set_size_hi,aurc\n"
             "0,none,0.86,0.17,0.88,0.80,0.95,1.03,0.90,1.30,0.06\n"
             "1,25,0.85,0.15,0.90,0.82,0.96,1.10,0.95,1.35,0.05\n")
    at.file_uploader(key="sweep_upload").upload("sweep.csv", table.encode(), "text/csv").run()
    _no_problem(at)
    specs = [c.proto.spec for c in at.main.get("plotly_chart")]
    drawn = [s for s in specs if "Prediction sets and abstention" in s]
    assert len(drawn) == 1 and "1 - alpha = 0.9" in drawn[0] and "mean set size (lower is better)" in drawn[0]
