"""How live the app feels: K headless-chromium sessions through a fixed script (prints figures; not a test).

Starts ``streamlit run app.py`` on a private result cache (the converted models are shared), prepares
it as ``make app`` does (importance scores and the full model's results), then for each K in
``--sessions`` opens K browser sessions at once, each running the same script:

1. open the app: seconds until the full model's metrics are on screen (first view);
2. switch one attention layer off (a different, never evaluated layer per session; with
   ``--same-mask`` the same one for every session of a group): seconds until the first numbers
   appear (the "examples in" panel) and until the page is complete (uncached);
3. switch it back on and off again: seconds until complete (cached; each of the two counts).

It prints p50 / p95 per step and K (with n, the number of timings), and the server's peak memory.
Prefetching is off by default so that the uncached toggles stay uncached (``--prefetch`` turns it on, as
the app has it). The browsers share the server's cores, so they poll lightly: a waiting session reads the
page once a second (a heavier poll takes a core from the server), so uncached times are read to within
about a second; cached toggles, which take under a second, are polled every 0.2 s.

    python benchmarks/bench_app.py [--sessions 1,3,5] [--prefetch] [--same-mask] [--read S]
                                   [--no-prepare]

The app's default sample (n = 200) is used.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).parent.parent
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
LAYERS = [26, 25, 29, 24, 27, 23, 22, 21, 28, 20]
"""Layers the sessions switch off, in turn: each K takes the next ones, so every first toggle is uncached. All
are 20 or above (the layers the issue's goals name), enough for 1 + 3 + 5 sessions."""
POLL = 1.0
"""Seconds between two reads of a page that waits for a computation."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--window-size=1600,1300"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


PAGE_STATE = """
const main = document.querySelector("[data-testid='stMain']");
let kept = "";
for (const m of document.querySelectorAll("[data-testid='stMain'] [data-testid='stMetric']")) {
  const label = m.querySelector("[data-testid='stMetricLabel']");
  if (label && label.innerText.trim() === "attention layers kept") {
    kept = m.querySelector("[data-testid='stMetricValue']").innerText.trim();
  }
}
return [main ? main.innerText : "", kept, !document.querySelector("[data-testid='stStatusWidget']")];
"""
"""One round trip for what the script watches: the main text, the layers-kept tile and whether a run is idle."""


def page_state(driver) -> tuple[str, str, bool]:
    text, kept, idle = driver.execute_script(PAGE_STATE)
    return text, kept, idle


def kept_and_idle(want: str):
    return lambda d: (state := page_state(d))[1] == want and state[2]


def until(driver, condition, timeout: float = 900, poll: float = 0.1) -> float:
    """Seconds until ``condition(driver)`` holds (polled every ``poll`` s; a page being redrawn is polled again)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        try:
            if condition(driver):
                return time.perf_counter() - start
        except (NoSuchElementException, StaleElementReferenceException):
            pass
        time.sleep(poll)
    raise TimeoutError("the page did not get there")


def peak_memory(pid: int) -> str:
    """The peak resident memory of a process (Linux: VmHWM in /proc), in words."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return f"{int(line.split()[1]) / 2**20:.2f} GiB"
    except OSError:
        pass
    return "unknown (no /proc here)"


def session(url: str, layer: int, layers: int, out: dict[str, list[float]], lock: threading.Lock,
            read: float = 0.0) -> None:
    from selenium.webdriver.common.by import By

    driver = browser()
    try:
        driver.get(url)
        first_view = until(driver, kept_and_idle(f"{layers} / {layers}"), poll=POLL)
        xpath = f"//section[@data-testid='stSidebar']//label[.//p[starts-with(normalize-space(.), '{layer} ·')]]"
        until(driver, lambda d: d.find_elements(By.XPATH, xpath), timeout=60)
        time.sleep(read)  # the user reads the page (prefetching works meanwhile, when it is on)
        driver.find_element(By.XPATH, xpath).click()
        t0 = time.perf_counter()
        seen_live = [None]

        def done_or_live(d) -> bool:
            text, kept, idle = page_state(d)
            if seen_live[0] is None and "examples in after" in text:
                seen_live[0] = time.perf_counter() - t0
            return kept == f"{layers - 1} / {layers}" and idle

        complete = until(driver, done_or_live, poll=POLL)
        cached = []
        for want in (f"{layers} / {layers}", f"{layers - 1} / {layers}"):
            driver.find_element(By.XPATH, xpath).click()
            cached.append(until(driver, kept_and_idle(want), poll=0.2))
        with lock:
            out["first view"].append(first_view)
            if seen_live[0] is not None:  # a session waiting on another's computation of its mask sees none
                out["toggle: first numbers (uncached)"].append(seen_live[0])
            out["toggle: complete (uncached)"].append(complete)
            out["toggle: complete (cached)"].extend(cached)
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", default="1,3,5")
    parser.add_argument("--prefetch", action="store_true", help="leave background prefetching on")
    parser.add_argument("--read", type=float, default=0.0,
                        help="seconds each session reads the first view before toggling (time to prefetch)")
    parser.add_argument("--same-mask", action="store_true",
                        help="every session of a group switches off the same layer (single flight: computed once)")
    parser.add_argument("--no-prepare", action="store_true", help="skip what make app computes before starting")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bench-app-"))
    models = Path(os.environ.get("PRUNE_EXPLORER_HOME", Path.home() / ".cache" / "prune-explorer")) / "models"
    (home / "models").symlink_to(models, target_is_directory=True)
    env = {**os.environ, "PRUNE_EXPLORER_HOME": str(home), "PRUNE_EXPLORER_PREFETCH": "1" if args.prefetch else "0",
           "TRANSFORMERS_VERBOSITY": "error"}
    if not args.no_prepare:
        t = time.perf_counter()
        for cmd in (["scores"], ["evaluate", "--n", "200", "--val-n", "0"]):
            subprocess.run([sys.executable, "-m", "core", *cmd], env=env, cwd=ROOT, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"prepared as make app does in {time.perf_counter() - t:.1f} s")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                               "--server.address", "127.0.0.1", "--server.headless", "true"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            time.sleep(0.3)
        print(f"{os.cpu_count()} CPU cores, n = 200, prefetch {'on' if args.prefetch else 'off'}")
        used = 0
        for k in map(int, args.sessions.split(",")):
            out: dict[str, list[float]] = {key: [] for key in (
                "first view", "toggle: first numbers (uncached)", "toggle: complete (uncached)",
                "toggle: complete (cached)")}
            lock = threading.Lock()
            layers = [LAYERS[used]] * k if args.same_mask else LAYERS[used : used + k]
            threads = [threading.Thread(target=session, args=(url, layer, 30, out, lock, args.read))
                       for layer in layers]
            used += len(set(layers))
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            print(f"\n{k} session(s) at once" + (", the same layer" if args.same_mask else "") + ":")
            for key, values in out.items():
                if values:
                    v = np.array(values)
                    print(f"  {key:36s} p50 {np.percentile(v, 50):6.2f} s   p95 {np.percentile(v, 95):6.2f} s   "
                          f"(n = {len(v)})")
        print(f"\nserver peak memory: {peak_memory(server.pid)}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
