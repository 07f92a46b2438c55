"""Healing in the app through AppTest (no browser), on the default model with 40 examples and 2 healing steps:
"Heal this mask" runs in the background, and once its adapters are cached the Calibration view shows the healed
model beside the full and the pruned one; the share link names it, and a link whose adapters are not cached
here offers the button without training."""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest
from test_app import _new_app, session

pytestmark = pytest.mark.slow


def _no_problem(at: AppTest) -> None:
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def _link(at: AppTest) -> dict[str, str]:
    return {k: v[0] if isinstance(v, list) else v for k, v in at.query_params.items()}


def _shared(link: dict[str, str]) -> AppTest:
    at = session()  # a new session: only the link
    for key, value in link.items():
        at.query_params[key] = value
    return at.run()


def _traces(at: AppTest) -> list[str]:
    return [t.get("name") for chart in at.main.get("plotly_chart")
            for t in json.loads(chart.proto.spec).get("data", [])]


def test_heal_this_mask_then_show_the_healed_model_on_the_calibration_view(module_results) -> None:
    at = _new_app(drop="25,26")
    at.session_state["heal_steps"] = 2
    at.run()
    _no_problem(at)
    assert [e.label for e in at.sidebar.expander if e.label == "Heal this mask"]
    assert not [t for t in at.toggle if t.key == "show_healed"]  # nothing cached yet
    captions = " ".join(c.value for c in at.sidebar.caption)
    assert "2 steps to train" in captions
    at.button(key="heal_start").click().run()
    job = at.session_state["heal_job"]
    assert job.wait(600) and job.error is None and job.complete, job.error
    at.run()
    _no_problem(at)
    assert "The adapters for this mask (2 lm steps) are cached." in " ".join(c.value for c in at.sidebar.caption)
    assert at.toggle(key="show_healed").value is True  # started here: shown once cached
    at.toggle(key="show_healed").set_value(False).run()
    assert not any(h.value.startswith("Pruned and healed") for h in at.main.subheader) and "heal" not in at.query_params
    at.toggle(key="show_healed").set_value(True).run()
    _no_problem(at)
    assert any(h.value.startswith("Pruned and healed") for h in at.main.subheader)
    tables = [t.value for t in at.main.dataframe]
    values = next(t for t in tables if "healed 95% CI" in t.columns)
    assert {"full", "pruned", "healed"} <= set(values.columns)
    changes = next(t for t in tables if "verdict" in t.columns and "change" in t.index.names)
    assert {c for _, c in changes.index} == {"healed - full", "healed - pruned"}
    assert set(changes["verdict"]) <= {"within noise", "better, beyond noise", "worse, beyond noise"}
    assert any(m.label == "ECE, healed" for m in at.main.metric)
    assert "pruned and healed" in _traces(at)  # its curve on the reliability diagram
    assert any("Flips, healed against full:" in c.value for c in at.main.caption)
    link = _link(at)
    assert (link["heal"], link["heal_steps"], link["drop"]) == ("lm", "2", "25,26")

    shared = _shared(link)  # the adapters are cached: the link shows the healed model at once
    _no_problem(shared)
    assert shared.toggle(key="show_healed").value is True
    assert any(h.value.startswith("Pruned and healed") for h in shared.main.subheader)

    other = _shared({**link, "heal_steps": "3"})  # not cached here: it says so, and trains nothing by itself
    _no_problem(other)
    assert "heal_job" not in other.session_state
    assert any("its adapters are not cached here" in i.value for i in other.sidebar.info)
    assert not [t for t in other.toggle if t.key == "show_healed"]
    assert any("shows here once its adapters are cached" in i.value for i in other.main.info)
    assert other.button(key="heal_start").label == "Start healing"  # 3 steps are another request, from scratch


def test_stop_ends_the_background_healing_and_says_so(module_results) -> None:
    at = _new_app(drop="25").run()  # 50 steps, the CPU default: minutes, so Stop comes first
    at.button(key="heal_start").click().run()
    _no_problem(at)
    job = at.session_state["heal_job"]
    assert job.running and at.button(key="heal_stop").label == "Stop"
    assert any("shows here once its adapters are cached" in i.value for i in at.main.info)
    at.button(key="heal_stop").click().run()
    assert job.wait(300) and job.stopped and not job.complete and job.error is None
    at.run()
    _no_problem(at)
    assert any(w.value.startswith(f"Healing stopped at step {job.step} of 50") for w in at.sidebar.warning)
    assert at.button(key="heal_start").disabled is False


def test_an_encoder_says_healing_is_for_causal_lms(minilm_head) -> None:
    at = _new_app(model="all-minilm-l6-v2", drop="1").run()
    _no_problem(at)
    assert any("Healing (a LoRA fine-tune of the pruned model) is for causal LMs" in c.value
               for c in at.sidebar.caption)
