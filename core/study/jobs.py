"""A sweep that runs in the background: one status line per mask, Stop, and its rows as they come.

The app starts a `SweepJob` and polls it, so that touching a widget (or leaving the page) does not
abandon the sweep, and a Stop takes effect at the next batch. Every point goes through the result
cache, so a stopped sweep resumes by running it again: the points already done are cache hits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from ..errors import Cancelled, UserError
from ..task.setup import Setup
from .background import BackgroundJob
from .prefetch import PREFETCHER
from .strategies import StrategyConfig, layer_order
from .sweep import COLUMNS, PointConfig, mask_label, points, sweep_steps

log = logging.getLogger(__name__)

STATES = ("waiting", "running", "from the cache", "computed", "stopped", "failed")
"""What a mask's status line can say."""


@dataclass
class MaskStatus:
    dropped: int
    layers: str
    """The mask's label ("?" until a greedy search has chosen it)."""
    state: str = "waiting"
    detail: str = ""
    seconds: float | None = None


def remaining(elapsed: float, done: float, total: float) -> str:
    """Time left at the rate so far, in words ("about 3 min left"); empty before the first unit is done."""
    if done <= 0 or total <= done:
        return ""
    left = elapsed / done * (total - done)
    return f"about {left:.0f} s left" if left < 90 else f"about {left / 60:.0f} min left"


class SweepJob(BackgroundJob):
    """`sweep` of one strategy's order in a daemon thread; `stop` asks it to end at the next batch."""

    def __init__(self, setup: Setup, strategy: StrategyConfig, max_drop: int, config: PointConfig,
                 latency: bool = True, order: Sequence[int] | None = None) -> None:
        strategy.validate()
        if not 0 <= max_drop <= setup.lm.num_layers:
            raise UserError(f"the number of layers to drop must be between 0 and {setup.lm.num_layers} "
                            f"(got {max_drop})")
        self.setup, self.strategy, self.max_drop, self.config, self.latency = setup, strategy, max_drop, config, latency
        self.order: list[int] | None = list(order) if order is not None else None
        self.rows: list[dict] = []
        self.error: str | None = None
        self.lines = [MaskStatus(k, mask_label(self.order[:k]) if self.order is not None else "?")
                      for k in range(max_drop + 1)]
        self.stage = ""
        self._lock = threading.Lock()
        super().__init__("sweep")

    @property
    def done(self) -> int:
        """How many masks are done (computed or read from the cache)."""
        return sum(1 for line in self.lines if line.state in ("computed", "from the cache"))

    def status(self) -> pd.DataFrame:
        """One line per mask: layers dropped, the mask, its state and seconds."""
        with self._lock:
            return pd.DataFrame([{"dropped": s.dropped, "mask": s.layers, "status": s.state + (
                f": {s.detail}" if s.detail else ""), "seconds": None if s.seconds is None else round(s.seconds, 1)}
                for s in self.lines])

    def table(self) -> pd.DataFrame:
        """The rows done so far, in `sweep`'s columns."""
        with self._lock:
            return pd.DataFrame(list(self.rows), columns=COLUMNS)

    def _check(self, *_: object) -> None:
        if self._stop.is_set():
            raise Cancelled("stopped")

    def _run(self) -> None:
        try:
            with PREFETCHER.foreground():  # the user's own work: background prefetching waits
                self._sweep()
        except Cancelled:
            pass
        except UserError as err:
            self.error = str(err)
        except Exception as err:  # noqa: BLE001 - said on the page, never lost in a thread
            log.exception("sweep failed")
            self.error = f"{type(err).__name__}: {err}"
        finally:
            with self._lock:
                for line in self.lines:
                    if line.state in ("waiting", "running"):
                        line.state, line.detail = ("failed", "") if self.error else ("stopped", "")
            self.finished = time.time()

    def _sweep(self) -> None:
        if self.order is None:
            self.stage = f"choosing the order ({self.strategy.name})"
            began = time.perf_counter()

            def choosing(what: str, done: float, total: int) -> None:
                self._check()
                left = remaining(time.perf_counter() - began, done, total)
                self.stage = f"choosing the order ({self.strategy.name}): {what}" + (f", {left}" if left else "")
            self.order = layer_order(self.setup, self.strategy, progress=choosing)
            with self._lock:
                for line in self.lines:
                    line.layers = mask_label(self.order[: line.dropped])
        known = set(points(self.setup, self.config)["layers"])
        start = time.perf_counter()

        def step(what: str, done: float, total: int) -> None:
            self._check()
            k = len(self.rows)
            with self._lock:
                self.lines[k].state, self.lines[k].detail = "running", what.split(": ", 1)[-1]
            self.stage = what

        steps = sweep_steps(self.setup, self.order, self.max_drop, self.config, progress=step, latency=self.latency)
        for row in steps:
            k = len(self.rows)
            with self._lock:
                line = self.lines[k]
                line.state = "from the cache" if line.layers in known else "computed"
                line.detail, line.seconds = "", time.perf_counter() - start
                self.rows.append(row)
            start = time.perf_counter()
            self._check()
