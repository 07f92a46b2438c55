"""Prefetching: evaluate the masks a user is likely to ask for next while the machine is otherwise idle.

One background thread per process works through the latest list of wanted masks, at a low
operating-system priority. Whenever a foreground computation runs (`Prefetcher.foreground`, which
the app holds around every script run) it stops at the next batch, so the user's own request gets the
cores; it resumes from the first mask still missing once the foreground is done. Results go to the
result cache, so a prefetched mask is simply a cache hit, and the prefetch keeps no state of its own.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from ..errors import Cancelled
from ..task.evaluation import EvalConfig, evaluate, is_cached
from ..task.setup import Setup

log = logging.getLogger(__name__)
NICE = 10
"""How much lower than the server's the prefetching thread's scheduling priority is (Linux: per thread)."""


def likely_next(order: Sequence[int], drop: Sequence[int], drop_k: int | None, limit: int = 24,
                budget: float = 6.0) -> list[tuple[int, ...]]:
    """The masks a user is likely to ask for next, most likely first: "drop the k most redundant" for the
    chosen k, then the current mask plus each remaining layer in importance order (``order``: most
    redundant first).

    As many as ``budget`` full forward passes pay for (at most ``limit``): a mask starts from the current
    mask's hidden states at the first layer where the two differ (`core.model.states`), so it costs the share
    of the layers from there on, and masks that change a top layer cost a fraction of one pass.
    """
    current, n = set(drop), len(order)
    wanted: list[tuple[int, ...]] = []
    if drop_k is not None and 0 < drop_k <= n:
        wanted.append(tuple(sorted(order[:drop_k])))
    wanted += [tuple(sorted(current | {layer})) for layer in order if layer not in current]
    out, layers = [], 0  # the budget in layer passes, counted in whole layers
    for mask in dict.fromkeys(m for m in wanted if set(m) != current and len(m) < n):
        layers += n - min(current ^ set(mask))
        if len(out) == limit or layers > budget * n + 1e-9:
            break
        out.append(mask)
    return out


@dataclass(frozen=True)
class _Wanted:
    setup: Setup
    config: EvalConfig
    masks: tuple[tuple[int, ...], ...]


class Prefetcher:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._wanted: _Wanted | None = None
        self._generation = 0
        self._foreground = 0
        self._thread: threading.Thread | None = None
        self._busy = threading.Event()
        self.computed = 0
        """Masks this prefetcher evaluated (for tests and the log)."""

    @contextlib.contextmanager
    def foreground(self) -> Iterator[None]:
        """Hold while the user's own work runs: prefetching stops at its next batch and waits."""
        with self._lock:
            self._foreground += 1
        try:
            yield
        finally:
            with self._lock:
                self._foreground -= 1
                self._wake.notify_all()

    def contended(self) -> bool:
        """Whether more than one foreground computation runs now (one of them is asked to give way)."""
        return self._foreground > 1

    def request(self, setup: Setup, config: EvalConfig, masks: Sequence[Sequence[int]]) -> None:
        """Prefetch ``masks`` under ``config`` (replacing any earlier list); needs a result cache."""
        if setup.cache is None or setup.refit_head:
            return  # nowhere to keep results; a re-fitted head costs more than it saves
        with self._lock:
            self._wanted = _Wanted(setup, replace(config, drop=()), tuple(tuple(sorted(m)) for m in masks))
            self._generation += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)
                self._thread.start()
            self._wake.notify_all()

    def clear(self, wait: float = 0.0) -> bool:
        """Forget the wanted list; a mask being prefetched stops at its next batch. With ``wait``, wait up to
        that many seconds for it to stop; returns whether nothing is being prefetched."""
        with self._lock:
            self._wanted = None
            self._generation += 1
        deadline = time.monotonic() + wait
        while self._busy.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self._busy.is_set()

    def ready(self, setup: Setup, config: EvalConfig, masks: Sequence[Sequence[int]]) -> int:
        """How many of ``masks`` are in the cache already (prefetched, or computed before)."""
        return sum(is_cached(setup, replace(config, drop=tuple(m))) for m in masks)

    def _next(self) -> tuple[int, Setup, EvalConfig] | None:
        """Wait for an idle moment and a wanted mask that is not cached; None when every one is."""
        with self._lock:
            while self._foreground or self._wanted is None:
                self._wake.wait()
            wanted, generation = self._wanted, self._generation
        for mask in wanted.masks:
            config = replace(wanted.config, drop=mask)
            if not is_cached(wanted.setup, config):
                return generation, wanted.setup, config
        with self._lock:
            if generation == self._generation:
                self._wanted = None  # all done: sleep until the next request
        return None

    def _run(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # not every platform has per-thread priorities
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        while True:
            job = self._next()
            if job is None:
                continue
            generation, setup, config = job

            def check(done: int, total: int, generation: int = generation) -> None:
                if self._foreground or generation != self._generation:
                    raise Cancelled

            self._busy.set()
            try:
                evaluate(setup, config, progress=check)
                self.computed += 1
            except Cancelled:
                continue
            except Exception:  # noqa: BLE001 - a failed prefetch must not end the thread; the user's request reports it
                log.exception("prefetching mask %s failed", list(config.drop))
                with self._lock:
                    if generation == self._generation:
                        self._wanted = None
            finally:
                self._busy.clear()


PREFETCHER = Prefetcher()
"""The process's prefetcher (the app server's sessions share it, and so the cores)."""
# a process must not end while the thread is inside torch (that aborts it): stop it first
atexit.register(PREFETCHER.clear, 30.0)
