"""Hidden-state checkpoints: a mask is scored from the first layer in which it differs from one already run.

Why it is exact. The residual stream entering layer l at a token depends on the weights, the token, the
tokens before it and which attention layers below l are dropped: the layers run in order and attention
is causal (an encoder attends both ways, but its rows are whole inputs, so the same holds per row).
Padding does not enter: no real position attends to a padded one. So a state is stored per row under

    (model, the row's tokens and the tokens cached before them, layer l, the dropped layers below l)

and any mask that drops the same layers below l starts that row at l from it: layers 0..l-1 are not run,
neither for the row nor for the part of the prompt prefix's KV cache they would fill (the prefix is a row
too, resumed the same way). From l on it is the same computation, so the answer equals a full
recomputation up to float rounding (the tests hold every family to 1e-5 in fp32).

The store. One per process (`STATES`), shared by every thread: the sessions of an app server, a sweep's
steps, the prefetcher and the greedy strategies all find each other's states. It is a cache, bounded by
``$PRUNE_EXPLORER_STATE_BYTES`` (`core.settings.state_max_bytes`), the least recently used states evicted
first; losing a state changes no number, only the time. States are kept in CPU memory in the model's dtype.
``$PRUNE_EXPLORER_RESUME=0`` turns resuming off (every pass runs every layer, as before).

What is recorded. Scoring a data set records the state entering every layer above the one it started at
(300 examples of the default data on the default model take about 22 MB a layer), so that a toggle of any
layer afterwards starts there. Explainers score hundreds of perturbed inputs per example, so they record
only at the layers a caller names: where the masks it will explain next first differ (`record_for`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import xxhash

from ..settings import resume_enabled, state_max_bytes
from .loading import LoadedModel
from .pruning import RunPlan, active_mask, resumed

StateKey = tuple[str, bytes, int, tuple[int, ...]]
"""(model, row digest, layer, the dropped layers below it)."""


def model_key(lm: LoadedModel) -> str:
    """What identifies the computation a state came from: the weights (dtype included), device and attention kernel."""
    implementation = getattr(lm.model.config, "_attn_implementation", None)
    return f"{lm.id}|{lm.device}|{implementation}"


def row_digest(past: Sequence[int], row: Sequence[int]) -> bytes:
    """A digest of a row's token ids and of the ids cached before it (its positions follow from their count)."""
    h = xxhash.xxh3_128()
    h.update(np.int64(len(past)).tobytes())
    h.update(np.asarray(past, dtype=np.int64).tobytes())
    h.update(np.asarray(row, dtype=np.int64).tobytes())
    return h.digest()


def record_for(drop: Iterable[int], next_masks: Iterable[Iterable[int]]) -> frozenset[int]:
    """The layers at which each of ``next_masks`` first differs from ``drop``: where they will start from
    states recorded under ``drop`` (a mask equal to ``drop`` needs none)."""
    base = set(drop)
    return frozenset(min(base ^ set(m)) for m in next_masks if base ^ set(m))


class StateStore:
    """A byte-bounded, thread-safe LRU of residual-stream states (see the module notes)."""

    def __init__(self, max_bytes: int | None = None, enabled: bool | None = None) -> None:
        self._max_bytes = max_bytes
        self.enabled = resume_enabled() if enabled is None else enabled
        self._states: OrderedDict[StateKey, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0
        """Rows that started from a stored state, rows that found none, states evicted."""

    @property
    def max_bytes(self) -> int:
        """The budget, read from the environment on first use (a bad value is a `UserError` there, not at import)."""
        if self._max_bytes is None:
            self._max_bytes = state_max_bytes()
        return self._max_bytes

    def get(self, key: StateKey) -> torch.Tensor | None:
        with self._lock:
            state = self._states.get(key)
            if state is not None:
                self._states.move_to_end(key)
            return state

    def put(self, key: StateKey, state: torch.Tensor) -> None:
        size = state.numel() * state.element_size()
        if not self.enabled or size > self.max_bytes:
            return
        with self._lock:
            old = self._states.pop(key, None)
            if old is not None:
                self._bytes -= old.numel() * old.element_size()
            self._states[key] = state
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, evicted = self._states.popitem(last=False)
                self._bytes -= evicted.numel() * evicted.element_size()
                self.evictions += 1

    def deepest(self, model: str, digest: bytes, below: Sequence[tuple[int, ...]], limit: int
                ) -> tuple[int, torch.Tensor | None]:
        """The deepest layer at or under ``limit`` with a stored state of this row, and the state; (0, None) if none.

        ``below[l]`` is the mask's dropped layers below ``l``.
        """
        if self.enabled:
            for layer in range(limit, 0, -1):
                if (state := self.get((model, digest, layer, below[layer]))) is not None:
                    return layer, state
        return 0, None

    def clear(self) -> None:
        with self._lock:
            self._states.clear()
            self._bytes = 0

    def info(self) -> dict[str, int | bool]:
        with self._lock:
            return {"enabled": self.enabled, "states": len(self._states), "bytes": self._bytes,
                    "max_bytes": self.max_bytes, "hits": self.hits, "misses": self.misses,
                    "evictions": self.evictions}


STATES = StateStore()
"""The process's store (the app server's sessions share it)."""


class Resumer:
    """Where each row of one set of forward passes starts, and the recording of states as the rows run.

    Made under the mask the passes run with (`core.model.pruning.dropped_attention`). ``past`` is what is
    cached before every row (the prompt prefix, or nothing), ``rows`` the token ids each row runs;
    ``record`` the layers whose entering states are kept (None: every layer above the row's start),
    ``limit`` the deepest start allowed (a prefix must not start above the rows that read its cache).
    """

    def __init__(self, lm: LoadedModel, past: Sequence[int], rows: Sequence[Sequence[int]],
                 record: Iterable[int] | None = None, store: StateStore | None = None,
                 limit: int | None = None) -> None:
        self.store = STATES if store is None else store
        self.model = lm.model
        n = lm.num_layers
        mask = active_mask(lm.model)
        self.key = model_key(lm)
        self.lengths = [len(r) for r in rows]
        self.digests = [row_digest(past, r) for r in rows]
        self.below = [tuple(sorted(i for i in mask if i < layer)) for layer in range(n + 1)]
        self.record = frozenset(range(1, n) if record is None else (r for r in record if 0 < r < n))
        deepest = n - 1 if limit is None else min(limit, n - 1)
        found = [self.store.deepest(self.key, d, self.below, deepest) for d in self.digests]
        self.starts = [layer for layer, _ in found]
        self._states = [state for _, state in found]
        started = sum(1 for s in self.starts if s)
        self.store.hits += started
        self.store.misses += len(rows) - started

    def lowest(self) -> int:
        """The lowest start of any row (0 when some row runs from the embeddings)."""
        return min(self.starts, default=0)

    def groups(self, rows: Sequence[int]) -> list[tuple[int, list[int]]]:
        """The rows of one batch split by start layer (usually one group): each group runs as one pass."""
        by_start: dict[int, list[int]] = {}
        for i in rows:
            by_start.setdefault(self.starts[i], []).append(i)
        return sorted(by_start.items())

    @contextmanager
    def running(self, rows: Sequence[int], width: int) -> Iterator[None]:
        """Run the forward pass made inside the block, of ``rows`` padded to ``width`` (all with one start), by plan."""
        start = self.starts[rows[0]]
        inject = None
        if start:
            first = self._states[rows[0]]
            inject = first.new_zeros((len(rows), width, first.shape[-1]))
            for r, i in enumerate(rows):
                inject[r, : self.lengths[i]] = self._states[i]
        record = frozenset(layer for layer in self.record if layer > start)
        if not (start or record):
            yield
            return

        def sink(layer: int, hidden: torch.Tensor) -> None:
            for r, i in enumerate(rows):
                state = hidden[r, : self.lengths[i]].detach().to("cpu", copy=True)
                self.store.put((self.key, self.digests[i], layer, self.below[layer]), state)

        with resumed(self.model, RunPlan(start, inject, record, sink if record else None)):
            yield
