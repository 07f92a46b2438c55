"""The shapes of progress callback that long work in the core reports through.

The core never draws anything: the CLI feeds these to a tqdm bar, the app to ``st.progress``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Progress = Callable[[int, int], None]
"""(done, total) for one stage: examples scored, texts measured, examples explained."""

StageProgress = Callable[[str, float, int], None]
"""(what is running, done, total) for work in stages; ``done`` may be fractional (a point half done)."""


@dataclass(frozen=True)
class TrainingStep:
    """One finished optimisation step of a fine-tune (healing): what a progress bar with loss and ETA shows."""

    step: int
    """Steps done, counting those a resumed run started from."""
    total: int
    loss: float
    """This step's training loss."""
    seconds: float
    """Time spent training in this run."""
    eta: float
    """Seconds still needed at this run's pace."""


TrainProgress = Callable[[TrainingStep], None]
