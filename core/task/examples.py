"""What a dataset is: its examples, its fixed seeded train / validation / test splits, its fingerprint and
its seeded samples.

Apart from `core.task.data` (where datasets come from: the embedded files, the hub, a user's file, and the
preset list) because everything that answers, scores or explains a data set needs only these types, not
the readers. `core.task.data` imports them, so each name is still imported from there too.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import UserError
from .prompts import Template, round_robin_by_label

SPLITS = ("train", "validation", "test")
SPLIT_SEED = 1234


@dataclass(frozen=True)
class Example:
    id: str
    text: str
    label: int
    n_options: int = 0
    """Multiple choice only: how many of the option letters this example offers."""


@dataclass
class Dataset:
    name: str
    task: str
    """'classification' or 'multiple-choice'."""
    label_names: tuple[str, ...]
    template: Template
    splits: dict[str, list[Example]]
    licence: str = ""
    source: str = ""
    warnings: tuple[str, ...] = ()
    """What was left out when the rows were read (empty texts, repeated texts), said on every evaluation."""
    fingerprint: str = field(default="", init=False)

    def __post_init__(self) -> None:
        if not any(self.splits.values()):
            raise UserError(f"dataset '{self.name}' is empty: it has no examples")
        used = {ex.label for split in self.splits.values() for ex in split}
        if len(used) < 2:
            raise UserError(
                f"dataset '{self.name}' has only one label ({self.label_names[next(iter(used))]}); "
                "a classification needs at least two"
            )
        h = hashlib.sha256()
        h.update(json.dumps([self.name, self.task, self.label_names]).encode())
        for split in SPLITS:
            for ex in self.splits.get(split, []):
                h.update(f"{split}\x1f{ex.id}\x1f{ex.text}\x1f{ex.label}\x1f{ex.n_options}\x1e".encode())
        self.fingerprint = h.hexdigest()[:16]

    def sample(
        self, split: str, n: int | None, seed: int = 0, balanced: bool = False
    ) -> tuple[list[Example], list[str]]:
        """Up to ``n`` examples of ``split`` (seeded), with warnings such as "n larger than the split"."""
        if split not in self.splits:
            raise UserError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
        pool = list(self.splits[split])
        warnings: list[str] = []
        if not pool:
            raise UserError(f"the {split} split of '{self.name}' is empty")
        if n is not None and n < 1:
            raise UserError(f"n must be at least 1 (got {n})")
        rng = random.Random(seed)
        rng.shuffle(pool)
        if n is None or n >= len(pool):
            if n is not None and n > len(pool):
                warnings.append(f"n={n} is larger than the {split} split ({len(pool)} examples): using all of it")
            chosen = pool
        elif balanced:
            chosen = round_robin_by_label(pool, n)
            rng.shuffle(chosen)
        else:
            chosen = pool[:n]
        return chosen, warnings


# ---------------------------------------------------------------- splitting


def split_fixed(examples: Sequence[Example], fractions: tuple[float, float] = (0.6, 0.2)) -> dict[str, list[Example]]:
    """Seeded train / validation / test split (60 / 20 / 20 by default); the same on every machine."""
    items = list(examples)
    random.Random(SPLIT_SEED).shuffle(items)
    n_train = int(len(items) * fractions[0])
    n_val = int(len(items) * fractions[1])
    return {
        "train": items[:n_train],
        "validation": items[n_train : n_train + n_val],
        "test": items[n_train + n_val :],
    }

