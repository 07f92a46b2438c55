"""Healing as a job: what it will cost before it starts, and a run in the background with status and Stop.

Healing a mask takes minutes on a CPU (the default model: about 4.5 s a step of 8 rows of 64 tokens on
two cores, so about 4 minutes for the CPU default of 50 steps; `docs/healing.md`), so a front end must
say what it will cost and let it run without holding the page:

* `estimate_heal`: the steps still to train (a finished run costs nothing, a stopped one resumes from
  its checkpoint) times the seconds per step, the median of the last runs timed with the same model,
  device, objective and batch shape (`timed_heal` records them in the result cache); with none timed
  yet it says so, and the running job's ETA measures it on its first steps.
* `HealJob`: `core.study.healing.heal` in a daemon thread, with its step, loss and ETA as it trains, a
  Stop that takes effect after the current step (the checkpoint is kept: starting it again resumes) and
  its error kept as a sentence. The app polls it; nothing here draws.
* `cached_heal`: the finished adapters when they are cached, or None: it never trains (a page that
  opens a shared link must not start minutes of training by itself).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..cache import cache_key
from ..errors import UserError
from ..progress import TrainingStep, TrainProgress
from ..task.setup import Setup
from .background import BackgroundJob
from .healing import HealConfig, HealResult, cached_steps, check_healable, heal, heal_key
from .prefetch import PREFETCHER

log = logging.getLogger(__name__)

RECENT_RUNS = 5
"""How many of the last timed runs' seconds per step an estimate takes the median of."""


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _timing_key(setup: Setup, config: HealConfig) -> str:
    """What a step's time depends on: the model and where it runs, the objective and the batch's shape."""
    lm = setup.lm
    return cache_key("heal-seconds", model=lm.id, device=lm.device, dtype=lm.dtype, objective=config.objective,
                     batch_size=config.batch_size, seq_len=config.seq_len, rank=config.rank)


def _seconds(stored: dict) -> list[float]:
    seconds = stored.get("per_step")
    if not isinstance(seconds, list) or not all(isinstance(x, int | float) for x in seconds):
        raise ValueError("not a list of seconds")
    return [float(x) for x in seconds]


def recorded_step_seconds(setup: Setup, config: HealConfig) -> list[float]:
    """The seconds per step of the last runs timed with these settings (any mask), oldest first."""
    if setup.cache is None:
        return []
    return setup.cache.load(_timing_key(setup, config), _seconds) or []


def _record(setup: Setup, config: HealConfig, per_step: float) -> None:
    if setup.cache is None:
        return
    key = _timing_key(setup, config)
    setup.cache.put(key, {"per_step": (recorded_step_seconds(setup, config) + [per_step])[-RECENT_RUNS:]})


def timed_heal(setup: Setup, drop: Sequence[int], config: HealConfig, progress: TrainProgress | None = None,
               stop: Callable[[], bool] | None = None) -> HealResult:
    """`heal`, recording the seconds per step of the steps it trained (none from the cache) for `estimate_heal`."""
    seen: dict[str, TrainingStep] = {}

    def step(s: TrainingStep) -> None:
        seen.setdefault("first", s)
        seen["last"] = s
        if progress is not None:
            progress(s)

    result = heal(setup, drop, config, progress=step, stop=stop)
    if seen:  # steps first.step .. last.step were trained in this run, in last.seconds
        _record(setup, config, seen["last"].seconds / (seen["last"].step - seen["first"].step + 1))
    return result


@dataclass(frozen=True)
class HealEstimate:
    """What healing one mask will cost before it starts."""

    steps: int
    cached: int
    """Steps already in the cache (all of them when finished; a stopped run's checkpoint otherwise)."""
    per_step: float | None
    """Seconds per step (None: nothing timed yet with these settings)."""
    basis: str

    @property
    def to_train(self) -> int:
        return self.steps - self.cached

    @property
    def seconds(self) -> float | None:
        return None if self.per_step is None else self.per_step * self.to_train

    def text(self) -> str:
        """One sentence: what is cached, and about how long the rest takes, with its basis."""
        if not self.to_train:
            return f"all {self.steps} steps are cached: the healed model loads in seconds"
        done = f"{self.cached} of {self.steps} steps cached (a stopped run resumes there); " if self.cached else ""
        if self.seconds is None:
            return f"{done}{self.to_train} steps to train; {self.basis}"
        return f"{done}{self.to_train} steps to train, about {_duration(self.seconds)} ({self.basis})"


def estimate_heal(setup: Setup, drop: Sequence[int], config: HealConfig) -> HealEstimate:
    """The steps of this request still to train and the time they take at the recorded pace."""
    cached = cached_steps(setup, drop, config)
    recent = recorded_step_seconds(setup, config)
    if not recent:
        return HealEstimate(config.steps, cached, None,
                            "no healing run has been timed with this model, device, objective and batch yet: the "
                            "first steps measure it (minutes per mask on a CPU)")
    per = float(np.median(recent))
    return HealEstimate(config.steps, cached, per,
                        f"{per:.1f} s per step, the median of the last {len(recent)} run"
                        f"{'s' if len(recent) != 1 else ''} timed with these settings")


def cached_heal(setup: Setup, drop: Sequence[int], config: HealConfig) -> HealResult | None:
    """The finished adapters of this request from the cache, or None when they are not there (nothing trains)."""
    if setup.cache is None or cached_steps(setup, drop, config) != config.steps:
        return None
    result = heal(setup, drop, config, stop=lambda: True)  # a cache hit; should the file vanish, it stops at once
    return result if result.complete else None


def require_causal(setup: Setup) -> None:
    """A `UserError` when the setup's model cannot be healed at all (an encoder, a model spread over devices)."""
    check_healable(setup.lm, (0,))


class HealJob(BackgroundJob):
    """`heal` of one mask in a daemon thread: step, loss and ETA while it trains, `stop` after the current step."""

    def __init__(self, setup: Setup, drop: Sequence[int], config: HealConfig) -> None:
        config.validate()
        self.drop = check_healable(setup.lm, drop)
        self.setup, self.config = setup, config
        self.key = heal_key(setup, self.drop, config)
        self.first_step = cached_steps(setup, self.drop, config)
        """The step it starts from (a stopped run's checkpoint)."""
        self.last: TrainingStep | None = None
        self.result: HealResult | None = None
        self.error: str | None = None
        super().__init__("heal")

    @property
    def complete(self) -> bool:
        return self.result is not None and self.result.complete

    @property
    def step(self) -> int:
        """Steps done, counting those a resumed run started from."""
        if self.result is not None:
            return self.result.steps_done
        return self.last.step if self.last is not None else self.first_step

    def for_request(self, setup: Setup, drop: Sequence[int], config: HealConfig) -> bool:
        """Whether this job heals exactly that request (model, data, mask and settings)."""
        return heal_key(setup, drop, config) == self.key

    def status(self) -> str:
        """Where it is, in one line: the step, the loss and the time left (or how it ended)."""
        total = self.config.steps
        if self.error is not None:
            return f"failed at step {self.step} of {total}: {self.error}"
        if not self.running:
            if self.complete:
                how = "read from the cache" if self.result.cached else f"trained in {_duration(self.result.seconds)}"
                return f"done: {total} steps, {how}"
            return f"stopped at step {self.step} of {total}: the checkpoint is kept, starting again resumes there"
        if self.last is None:
            return (f"preparing (copying the model, adding the adapters, reading the data); step {self.first_step} "
                    f"of {total}")
        s = self.last
        left = f", about {_duration(s.eta)} left" if s.step < total else ""
        pace = s.seconds / max(s.step - self.first_step, 1)
        return f"step {s.step} of {total}, loss {s.loss:.3f}{left} ({pace:.1f} s per step so far)"

    def _progress(self, step: TrainingStep) -> None:
        self.last = step

    def _run(self) -> None:
        try:
            with PREFETCHER.foreground():  # the user's own work: background prefetching waits
                self.result = timed_heal(self.setup, self.drop, self.config, self._progress, self._stop.is_set)
        except UserError as err:
            self.error = str(err)
        except Exception as err:  # noqa: BLE001 - said on the page, never lost in a thread
            log.exception("healing failed")
            self.error = f"{type(err).__name__}: {err}"
        finally:
            self.finished = time.time()
