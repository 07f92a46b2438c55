"""Where the project keeps files it makes (converted models, the result cache), and the app's switches."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "PRUNE_EXPLORER_HOME"
CACHE_BYTES_ENV = "PRUNE_EXPLORER_CACHE_BYTES"
DEFAULT_CACHE_BYTES = 512 * 1024 * 1024
PREFETCH_ENV = "PRUNE_EXPLORER_PREFETCH"


def home() -> Path:
    """Root folder for converted models and cached results (``$PRUNE_EXPLORER_HOME``)."""
    root = os.environ.get(HOME_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "prune-explorer"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_max_bytes() -> int:
    raw = os.environ.get(CACHE_BYTES_ENV)
    return int(raw) if raw else DEFAULT_CACHE_BYTES


def prefetch_enabled() -> bool:
    """Whether the app evaluates likely next masks in the background (``$PRUNE_EXPLORER_PREFETCH=0``: off)."""
    return os.environ.get(PREFETCH_ENV, "1").strip().lower() not in {"0", "false", "no", "off"}
