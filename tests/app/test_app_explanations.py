"""The Explanations view through AppTest: explanations on demand, a typed text, every explainer compared.

The tests share one result cache (`module_results`) and run in order: the first needs the chosen
example not to be explained yet.
"""

from __future__ import annotations

import time

import pytest
from streamlit.testing.v1 import AppTest
from test_app import _new_app

from core.explain.methods import EXPLAINERS

pytestmark = pytest.mark.slow
PAGE = "views/explanations.py"
SENTENCE = "A wonderful, moving film with a superb cast."


def _explanations(**query: str) -> AppTest:
    """The Explanations view on 40 examples with occlusion, layer 26 dropped (unless ``query`` says otherwise)."""
    at = _new_app(**{"drop": "26", **query}).run()
    at.switch_page(PAGE).run()
    _no_problem(at)
    return at


def _no_problem(at: AppTest) -> None:
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def _infos(at: AppTest) -> str:
    return " ".join(i.value for i in at.main.info)


def _words(at: AppTest) -> list[str]:
    """The words of the attributions table (the table drawn with the explanation)."""
    tables = [t.value for t in at.main.dataframe if "word" in t.value.columns]
    assert len(tables) == 1, [list(t.value.columns) for t in at.main.dataframe]
    return list(tables[0]["word"])


def _quoted(at: AppTest) -> str:
    """The text being explained, shown as a quote."""
    return next(m.value for m in at.main.markdown if m.value.startswith("> "))[2:]


def test_an_example_is_explained_only_when_cached_asked_for_or_automatic(module_results) -> None:
    at = _explanations()
    assert not at.main.get("plotly_chart"), "nothing cached and auto off: nothing should be explained"
    assert "Press **Explain this example**" in _infos(at)
    at.button(key="explain_run").click().run()
    _no_problem(at)
    assert len(at.main.get("plotly_chart")) == 2  # the heatmap and the ERASER curves
    assert _words(at) == _quoted(at).split()
    assert "Press **Explain this example**" not in _infos(at)
    at.run()  # a rerun keeps it (cached now, so the button is greyed out)
    assert len(at.main.get("plotly_chart")) == 2 and at.button(key="explain_run").disabled
    # another example is not explained until asked for; with "Explain automatically" it is at once
    chosen = at.selectbox(key="example").value
    other = next(i for i in (o.split(":")[0] for o in at.selectbox(key="example").options) if i != chosen)
    at.selectbox(key="example").set_value(other).run()
    _no_problem(at)
    assert not at.main.get("plotly_chart") and "Press **Explain this example**" in _infos(at)
    at.toggle(key="explain_auto").set_value(True).run()
    _no_problem(at)
    assert len(at.main.get("plotly_chart")) == 2 and _words(at) == _quoted(at).split()


def test_a_typed_text_is_explained_with_both_models_answers_and_no_label(module_results) -> None:
    at = _explanations()
    at.text_area(key="typed_text").input(SENTENCE).run()
    _no_problem(at)
    assert _quoted(at) == SENTENCE and not at.main.get("plotly_chart")
    assert "Press **Explain this example**" in _infos(at)
    at.button(key="explain_run").click().run()
    _no_problem(at)
    assert _words(at) == SENTENCE.split()
    captions = " ".join(c.value for c in at.main.caption)
    assert "no label: your own text" in captions and "label **" not in captions
    answers = ("positive", "negative")
    assert any(f"full model: **{a}** (" in captions for a in answers), captions
    assert any(f"pruned: **{b}** (" in captions for b in answers), captions
    at.text_area(key="typed_text").input("good " * 300).run()  # longer than the model's input window
    assert not at.exception
    assert any("tokens long; at most 256 fit in the input" in e.value for e in at.error), [e.value for e in at.error]
    at.text_area(key="typed_text").input("   ").run()  # blank: back to the chosen example
    _no_problem(at)
    assert _quoted(at) != SENTENCE


def test_every_explainer_is_compared_on_the_example_in_a_table_that_stays(module_results) -> None:
    at = _explanations()
    pick = at.selectbox(key="example")
    shortest = min(range(len(pick.options)), key=lambda i: len(pick.options[i]))  # the quickest to explain
    pick.select_index(shortest).run()
    start = time.perf_counter()
    at.button(key="explain_compare").click().run()
    seconds = time.perf_counter() - start
    _no_problem(at)
    print(f"every explainer on one example, both models: {seconds:.1f} s")
    tables = [t.value for t in at.main.dataframe if "explainer" in t.value.columns]
    assert len(tables) == 1
    names = [info.title for name, info in EXPLAINERS.items() if name != "random"]
    assert list(tables[0]["explainer"]) == [*names, "Random (reference, mean of 3 draws)"]
    assert tables[0]["comprehensiveness, pruned"].notna().all()
    assert any("n = 1" in c.value and "no interval is possible" in c.value for c in at.main.caption)
    at.run()  # kept in the session: drawn again without pressing
    assert [list(t.value["explainer"]) for t in at.main.dataframe if "explainer" in t.value.columns] == [
        list(tables[0]["explainer"])]
