"""Where the project keeps files it makes (converted models, the result cache), and the app's switches."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError

HOME_ENV = "PRUNE_EXPLORER_HOME"
CACHE_BYTES_ENV = "PRUNE_EXPLORER_CACHE_BYTES"
DEFAULT_CACHE_BYTES = 512 * 1024 * 1024
PREFETCH_ENV = "PRUNE_EXPLORER_PREFETCH"
STATE_BYTES_ENV = "PRUNE_EXPLORER_STATE_BYTES"
DEFAULT_STATE_BYTES = 2 * 1024**3
"""Hidden-state checkpoints kept for resuming (`core.model.states`): the default model's full-model states for
300 examples take about 650 MB, so 2 GiB holds them and the states of the masks explored from them; a 24 GB
machine running the app with several sessions keeps room for the models and the sessions."""
RESUME_ENV = "PRUNE_EXPLORER_RESUME"
LATENCY_ENV = "PRUNE_EXPLORER_LATENCY"


def home() -> Path:
    """Root folder for converted models and cached results (``$PRUNE_EXPLORER_HOME``)."""
    root = os.environ.get(HOME_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "prune-explorer"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def _bytes(name: str, default: int) -> int:
    """A byte count from the environment variable ``name``: a whole number, optionally with K, M or G (binary)."""
    raw = os.environ.get(name, "").strip().upper().removesuffix("B").removesuffix("I")
    if not raw:
        return default
    unit = raw[-1] if raw[-1] in _UNITS else ""
    number = raw[: len(raw) - len(unit)].strip()
    if not number.isdigit():
        raise UserError(f"${name} must be a whole number of bytes, optionally with K, M or G (e.g. 2G); "
                        f"got '{os.environ[name]}'")
    return int(number) * _UNITS[unit]


def cache_max_bytes() -> int:
    """The byte budget of the result cache on disk (``$PRUNE_EXPLORER_CACHE_BYTES``)."""
    return _bytes(CACHE_BYTES_ENV, DEFAULT_CACHE_BYTES)


def state_max_bytes() -> int:
    """The byte budget of the hidden-state checkpoints (``$PRUNE_EXPLORER_STATE_BYTES``; 0 keeps none)."""
    return _bytes(STATE_BYTES_ENV, DEFAULT_STATE_BYTES)


def _switch(name: str) -> bool:
    return os.environ.get(name, "1").strip().lower() not in {"0", "false", "no", "off"}


def resume_enabled() -> bool:
    """Whether forward passes resume from stored hidden states (``$PRUNE_EXPLORER_RESUME=0``: off)."""
    return _switch(RESUME_ENV)


def prefetch_enabled() -> bool:
    """Whether the app evaluates likely next masks in the background (``$PRUNE_EXPLORER_PREFETCH=0``: off)."""
    return _switch(PREFETCH_ENV)


def latency_enabled() -> bool:
    """Whether the app's *Measure latency* starts on (``$PRUNE_EXPLORER_LATENCY=0``: off, e.g. on a shared server,
    where timings say little and each new mask's 20 timed passes hold up the next page)."""
    return _switch(LATENCY_ENV)
