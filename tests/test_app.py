"""The app starts on the default model and data and reacts to the layer selection (AppTest)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

pytestmark = pytest.mark.slow


def test_app_starts_and_dropping_layers_changes_the_metrics() -> None:
    at = AppTest.from_file(str(Path(__file__).parent.parent / "app.py"), default_timeout=600)
    at.run()
    assert not at.exception, at.exception
    at.slider(key="n").set_value(40).run()
    assert not at.exception
    before = {m.label: m.value for m in at.metric}
    assert before["attention layers kept"] == "30 / 30"
    at.number_input(key="k").set_value(4).run()
    assert not at.exception, at.exception
    after = {m.label: m.value for m in at.metric}
    assert after["attention layers kept"] == "26 / 30"
    assert (after["accuracy"], after["ECE"]) != (before["accuracy"], before["ECE"])
