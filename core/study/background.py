"""What every job the app runs in the background shares: a daemon thread, Stop, and waiting for the end.

`SweepJob` (`core.study.jobs`) and `HealJob` (`core.study.heal_job`) poll their own progress; this holds
the part that is the same for both. A subclass does its work in ``_run``, checks `stopped` at its own
checkpoints (a batch, a training step) and sets ``finished`` when it ends, however it ends.
"""

from __future__ import annotations

import threading
import time
from typing import Self


class BackgroundJob:
    """A computation in a daemon thread named ``name``; `stop` asks it to end at its next checkpoint."""

    def __init__(self, name: str) -> None:
        self.started = time.time()
        self.finished: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the job to end; whether it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self.finished is None

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()
