"""End to end in a real headless browser: start the app, toggle a layer, watch the metrics change.

Needs Debian's chromium and chromium-driver (``make test`` installs them). Screenshots go to
``artifacts/`` (or ``$PRUNE_EXPLORER_ARTIFACTS``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[2]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("PRUNE_EXPLORER_ARTIFACTS", ROOT / "artifacts"))
SERVER_LOG = ARTIFACTS / "streamlit.log"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(module_results) -> Iterator[str]:
    port = _free_port()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = open(SERVER_LOG, "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ},
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None, SERVER_LOG.read_text()
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: install Debian's chromium and chromium-driver "
                    "(make test does: apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1600,1300"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _metrics(driver) -> dict[str, str]:
    from selenium.webdriver.common.by import By

    out = {}
    for m in driver.find_elements(By.CSS_SELECTOR, "[data-testid='stMain'] [data-testid='stMetric']"):
        label = m.find_element(By.CSS_SELECTOR, "[data-testid='stMetricLabel']").text.strip()
        out[label] = m.find_element(By.CSS_SELECTOR, "[data-testid='stMetricValue']").text.strip()
    return out


def _wait(driver, condition, timeout: float, what: str):
    """Wait for `condition`; on a timeout say what the page showed and what the server logged.

    Streamlit replaces elements while a script reruns, so an element found a moment ago can be stale
    by the time it is read: that is a reason to poll again, not a failure.
    """
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    transient = (NoSuchElementException, StaleElementReferenceException)
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.5, ignored_exceptions=transient).until(
            lambda d: condition(d))
    except TimeoutException:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "app-e2e-failure.png"))
        try:
            shown = f"metrics {_metrics(driver)}, {'running' if not _idle(driver) else 'idle'}"
        except transient:
            shown = "a page being redrawn"
        log = SERVER_LOG.read_text()[-3000:] if SERVER_LOG.exists() else "(no server log)"
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; the page showed {shown}; "
                             f"screenshot in {ARTIFACTS}; server log:\n{log}") from None


def _idle(driver) -> bool:
    """No script run in progress (the status widget shows 'Running...' while one is), and no element of an
    earlier run left fading out."""
    from selenium.webdriver.common.by import By

    return not driver.find_elements(By.CSS_SELECTOR, "[data-testid='stStatusWidget'], [data-stale='true']")


def _main_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, "[data-testid='stMain']").text


def _click_button(driver, text: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.XPATH, f"//button[.//p[normalize-space(.)='{text}']]").click()


def test_the_start_view_drops_the_suggested_layers(server: str, browser) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.get(server)
    _wait(browser, lambda d: "Drop the 4 suggested layers" in _main_text(d) and _idle(d), 600, "the start view")
    browser.save_screenshot(str(ARTIFACTS / "app-start.png"))
    _click_button(browser, "Drop the 4 suggested layers")
    _wait(browser, lambda d: "4 attention layers dropped: right" in _main_text(d) and _idle(d), 600,
          "the pruned model's verdict")
    assert "predictions flipped" in _main_text(browser) and "drop=" in browser.current_url
    browser.save_screenshot(str(ARTIFACTS / "app-start-tour.png"))


def test_the_start_view_runs_its_small_sweep_with_a_live_status(server: str, browser) -> None:
    import re

    browser.get(server + "/?n=40")  # a small sample: the sweep's seven masks take seconds
    _wait(browser, lambda d: "Run the small sweep" in _main_text(d) and _idle(d), 600, "the start view")
    _click_button(browser, "Run the small sweep")
    seen: set[int] = set()

    def finished(d) -> bool:
        text = _main_text(d)
        if found := re.search(r"Sweep running \(the small sweep of the Start view.*?\): (\d) of 7 masks done", text):
            seen.add(int(found.group(1)))
        return "In this sweep (each change paired" in text and _idle(d)

    _wait(browser, finished, 600, "the small sweep's curves")
    # the status line was redrawn while the sweep ran in the background, then the results replaced it
    assert seen and "Sweep running" not in _main_text(browser), seen
    browser.save_screenshot(str(ARTIFACTS / "app-start-sweep.png"))


def test_toggle_a_layer_in_a_real_browser(server: str, browser) -> None:
    from selenium.webdriver.common.by import By

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.get(server + "/calibration")
    _wait(browser, lambda d: _metrics(d).get("attention layers kept") == "30 / 30" and _idle(d), 600,
          "the full model's metrics")
    before = _metrics(browser)
    browser.save_screenshot(str(ARTIFACTS / "app-calibration-full.png"))
    layer_26 = "//section[@data-testid='stSidebar']//label[.//p[starts-with(normalize-space(.), '26 ·')]]"
    toggle = browser.find_element(By.XPATH, layer_26)
    start = time.perf_counter()
    toggle.click()
    live, kept = _wait(browser, lambda d: (t := d.find_element(By.CSS_SELECTOR, "[data-testid='stMain']").text)
                       and "examples in after" in t and (t, _metrics(d).get("attention layers kept")), 300,
                       "first numbers while the pruned model is scored")
    first = time.perf_counter() - start
    # shown while the page still holds the full model's tiles: before the pruned evaluation is done
    assert "so far" in live and "95% CI" in live and kept != "29 / 30"
    after = _wait(browser, lambda d: (m := _metrics(d)).get("attention layers kept") == "29 / 30" and _idle(d)
                  and m, 600, "the pruned model's metrics")
    seconds = time.perf_counter() - start
    assert first < seconds
    browser.save_screenshot(str(ARTIFACTS / "app-calibration-pruned.png"))
    tiles = ("accuracy", "ECE", "Brier score")
    assert [after[k] for k in tiles] != [before[k] for k in tiles]
    assert "drop=26" in browser.current_url
    print(f"toggle to first numbers: {first:.1f} s; to updated metrics: {seconds:.1f} s (uncached)")
    browser.get(server + "/explanations?drop=26")
    explain = "//button[.//p[normalize-space(.)='Explain this example']]"  # explanations are drawn on request
    _wait(browser, lambda d: d.find_elements(By.XPATH, explain) and _idle(d), 600, "the explanations view")
    browser.find_element(By.XPATH, explain).click()
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot") and _idle(d), 600,
          "the explanation, once asked for")
    browser.save_screenshot(str(ARTIFACTS / "app-explanations.png"))
    assert not browser.find_elements(By.CSS_SELECTOR, "[data-testid='stException']")


def test_the_sweep_report_renders_its_charts_offline(browser, tmp_path) -> None:
    import pandas as pd
    from selenium.webdriver.common.by import By

    from core.study.report import render

    table = pd.DataFrame({"dropped": [0, 1, 2], "layers": ["none", "26", "25,26"], "accuracy": [0.86, 0.87, 0.85],
                          "ece": [0.17, 0.18, 0.2], "ece_temperature_scaled": [0.07, 0.06, 0.08],
                          "comprehensiveness": [0.3, 0.25, 0.2], "sufficiency": [0.0, 0.05, 0.1]})
    page = tmp_path / "report.html"
    page.write_text(render(table, {"strategy": "similarity"}), encoding="utf-8")
    browser.get(page.as_uri())  # a file, no server; chromium has no network here
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .main-svg")) >= 2, 60,
          "the report's charts")
    assert "similarity" in browser.page_source
