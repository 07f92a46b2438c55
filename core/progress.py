"""The two shapes of progress callback that long work in the core reports through.

The core never draws anything: the CLI feeds these to a tqdm bar, the app to ``st.progress``.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int, int], None]
"""(done, total) for one stage: examples scored, texts measured, examples explained."""

StageProgress = Callable[[str, float, int], None]
"""(what is running, done, total) for work in stages; ``done`` may be fractional (a point half done)."""
