"""The study grid's plan: what a grid is (`GridSpec`), its cells and points, their checks and their keys.

`core.study.grid` runs a plan; this module only describes one, from configs and data alone, so that every
problem is found, and every point named and keyed, before any model loads (and without Ray).

A *point* is one mask's row of metrics (`core.study.sweep.evaluate_point`): the first ``k`` layers of a
strategy's order dropped from a model, evaluated on a dataset, with the faithfulness of one explainer when
``faith_n`` > 0. A *cell* is a (model, dataset, strategy): its order is computed once and serves its
points.

* **Planning** (`plan`) reads only configs and data: unknown models, datasets, strategies or
  explainers, and a ``max_drop`` beyond a model's layers, are refused before any model loads.
* **Keys** (`Plan.point_key`, `Plan.order_key`): each finished point's row (and each cell's order) is
  stored by the driver under a content key of everything that defines it (the model's file signature,
  the data's fingerprint, the settings), so a rerun computes only the points the cache lacks.
* **Healing** (`GridSpec.heal`): every pruned point gets a healed twin, a row of its own whose ``healed``
  column names the settings (`heal_label`: ``healed (lm, 50 steps)``; the others say `NOT_HEALED`): the
  pruned model healed with LoRA under the same mask (`core.study.sweep.healed_point`), its metrics and
  changes from the full model in the usual columns, its paired changes from the unhealed pruned model in
  `HEALED_POINT_COLUMNS`. Its key adds the healing settings; the unhealed points keep theirs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..cache import cache_key
from ..errors import UserError
from ..explain.dataset import ExplainConfig
from ..explain.methods import EXPLAINERS
from ..task.data import Dataset, load_dataset
from ..task.evaluation import EvalConfig
from ..task.prompts import PromptConfig
from ..task.recalibration import RECALIBRATION_VERSION, RECALIBRATORS
from .heal_data import HEAL_VERSION, HealConfig
from .repair import require_validation
from .sets import DEFAULT_ALPHA, DEFAULT_METHOD, check_settings
from .strategies import DEFAULT_STRATEGY, STRATEGIES, StrategyConfig, candidate_masks
from .sweep import COLUMNS, HEALED_POINT_COLUMNS, PointConfig, repair_columns

ENGINES = ("local", "ray")
GREEDY = ("greedy-divergence", "trust-greedy")
KEYS = ["model", "dataset", "strategy", "explainer", "dropped"]
"""What names a point: one row per distinct combination."""
COLUMNS_OUT = [*KEYS[:-1], *[c for c in COLUMNS if not c.startswith(("latency_", "flop_"))], "cached"]
"""The columns of results.csv: the point's names, the sweep's metrics with intervals, and where it came from."""
RUN_DEPENDENT = ("seconds", "cached")
"""Columns that say how a run went rather than what the model does; equal grids differ only in these."""
NOT_HEALED = "not healed"
"""The ``healed`` column of a grid with healing, on the rows of models as pruned."""


def heal_label(config: HealConfig) -> str:
    """The ``healed`` column of a healed row: ``healed (lm, 50 steps)``."""
    return f"healed ({config.objective}, {config.steps} steps)"


@dataclass(frozen=True)
class GridSpec:
    models: tuple[str, ...]
    datasets: tuple[str, ...]
    strategies: tuple[str, ...] = (DEFAULT_STRATEGY,)
    max_drop: int = 8
    n: int = 200
    val_n: int = 100
    faith_n: int = 0
    """Examples explained per point for faithfulness; 0: accuracy and calibration only."""
    explainers: tuple[str, ...] = ("occlusion",)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    dtype: str = "fp32"
    device: str = "cpu"
    seed: int = 0
    calibration_n: int = 100
    """Greedy strategies: the validation examples they judge masks on."""
    alpha: float = DEFAULT_ALPHA
    """The prediction sets' miscoverage (`core.study.sets`)."""
    method: str = DEFAULT_METHOD
    """The prediction sets' conformal score."""
    repair: tuple[str, ...] = ()
    """Recalibration methods fitted on each point's validation split (their columns: `repair_columns`)."""
    heal: HealConfig | None = None
    """Heal every pruned point with LoRA with these settings, as a row of its own (minutes per mask on a CPU)."""

    def explainer_list(self) -> tuple[str | None, ...]:
        return self.explainers if self.faith_n > 0 else (None,)


@dataclass(frozen=True)
class Cell:
    model: str
    dataset: str
    strategy: str


@dataclass(frozen=True)
class Point:
    cell: Cell
    explainer: str | None
    dropped: int
    healed: bool = False
    """The pruned model healed with the grid's `GridSpec.heal` (a row of its own)."""


@dataclass
class Plan:
    """A checked grid: its points, and the keys under which each point and each cell's order are stored."""

    spec: GridSpec
    datasets: dict[str, Dataset]
    layers: dict[str, int]
    signatures: dict[str, str]
    points: list[Point]

    def _cell_parts(self, cell: Cell) -> dict[str, Any]:
        return dict(model=self.signatures[cell.model], dataset=self.datasets[cell.dataset].fingerprint,
                    strategy=asdict(self.strategy(cell)), prompt=asdict(self.spec.prompt))

    def strategy(self, cell: Cell) -> StrategyConfig:
        return StrategyConfig(name=cell.strategy, seed=self.spec.seed, calibration_n=self.spec.calibration_n,
                              steps=self.spec.max_drop or None)

    def order_key(self, cell: Cell) -> str:
        return cache_key("study-order", **self._cell_parts(cell))

    def point_key(self, point: Point) -> str:
        return cache_key("study-point", **self._cell_parts(point.cell), dropped=point.dropped,
                         eval=asdict(self.eval_config()), explain=self.explain_parts(point.explainer),
                         sets={"alpha": repr(float(self.spec.alpha)), "method": self.spec.method},
                         # only when asked for, so that the points stored before the option existed stay found
                         **({"repair": list(self.spec.repair), "repair_version": RECALIBRATION_VERSION}
                            if self.spec.repair else {}),
                         **({"heal": asdict(self.spec.heal), "heal_version": HEAL_VERSION}
                            if point.healed and self.spec.heal is not None else {}))

    def eval_config(self) -> EvalConfig:
        return EvalConfig(n=self.spec.n, seed=self.spec.seed, val_n=self.spec.val_n)

    def explain_parts(self, explainer: str | None) -> dict | None:
        if explainer is None:
            return None
        config = ExplainConfig.make(explainer)
        return {"explainer": explainer, "params": config.resolved_params(), "n": self.spec.faith_n}

    def point_config(self, explainer: str | None) -> PointConfig:
        return PointConfig(eval=self.eval_config(),
                           explain=ExplainConfig.make(explainer) if explainer else None,
                           faith_n=max(self.spec.faith_n, 1), alpha=self.spec.alpha, method=self.spec.method,
                           repair=self.spec.repair)

    def columns(self) -> list[str]:
        """The columns of results.csv: `COLUMNS_OUT`, with the repair methods' before ``cached``; with healing, the
        ``healed`` column after ``explainer`` and `HEALED_POINT_COLUMNS` before ``cached``."""
        if self.spec.heal is None:
            return [*COLUMNS_OUT[:-1], *repair_columns(self.spec.repair), COLUMNS_OUT[-1]]
        names = len(KEYS) - 1
        return [*COLUMNS_OUT[:names], "healed", *COLUMNS_OUT[names:-1], *repair_columns(self.spec.repair),
                *HEALED_POINT_COLUMNS, COLUMNS_OUT[-1]]

    def cells(self) -> list[Cell]:
        return list(dict.fromkeys(p.cell for p in self.points))

    def order_masks(self, cell: Cell) -> int:
        """The candidate masks a cell's order tries (a greedy strategy's search; 0 for the others)."""
        if cell.strategy not in GREEDY:
            return 0
        return candidate_masks(self.layers[cell.model], self.strategy(cell).steps or self.layers[cell.model])


def _unknown(kind: str, names: Sequence[str], allowed: Sequence[str]) -> None:
    if bad := [x for x in names if x not in allowed]:
        raise UserError(f"unknown {kind} {', '.join(repr(x) for x in bad)}; use {', '.join(allowed)}")


def plan(spec: GridSpec, engine: str = "local", check_device: bool = True) -> Plan:
    """Check ``spec`` and list its points; every problem is a `UserError` raised before any model loads."""
    from ..model.loading import model_info

    for kind, values in (("model", spec.models), ("dataset", spec.datasets), ("strategy", spec.strategies)):
        if not values:
            raise UserError(f"the grid needs at least one {kind}")
        if len(set(values)) != len(values):
            raise UserError(f"a {kind} is named twice: {', '.join(values)}")
    _unknown("engine", [engine], ENGINES)
    if engine == "ray" and spec.device == "auto":
        raise UserError("device 'auto' spreads one model over every GPU of this machine; with the ray engine "
                        "use cuda (each worker gets a GPU of its own)")
    _unknown("strategy", spec.strategies, list(STRATEGIES))
    if spec.faith_n < 0 or spec.n < 1 or spec.val_n < 0 or spec.max_drop < 0:
        raise UserError("n must be at least 1, and val_n, faith_n and max_drop at least 0")
    check_settings(spec.alpha, spec.method)  # too few validation examples for alpha leave a point's sets empty
    if spec.heal is not None:
        spec.heal.validate()
        if spec.device == "auto":
            raise UserError("healing needs the whole model on one device; use --device cuda (or cpu), not auto")
    if spec.faith_n > 0:
        if not spec.explainers:
            raise UserError(f"faith_n > 0 needs at least one explainer: {', '.join(EXPLAINERS)}")
        _unknown("explainer", spec.explainers, list(EXPLAINERS))
    infos = {m: model_info(m, spec.dtype, spec.device, check_device=check_device) for m in spec.models}
    datasets = {d: load_dataset(d) for d in spec.datasets}
    for name, info in infos.items():
        if spec.max_drop > info.num_layers:
            raise UserError(f"max_drop {spec.max_drop} is more than the {info.num_layers} attention layers of "
                            f"'{name}'; use 0 to {info.num_layers}")
    if spec.repair:
        _unknown("recalibration method", spec.repair, list(RECALIBRATORS))
        for ds in datasets.values():
            require_validation(ds, spec.val_n, "the repair methods")
    greedy = [s for s in spec.strategies if s in GREEDY]
    lacking = [d for d, ds in datasets.items() if not ds.splits.get("validation")]
    if greedy and lacking:
        raise UserError(f"the strategies {', '.join(greedy)} choose on a validation split, which "
                        f"{', '.join(lacking)} lack(s)")
    # a cell's healed points after its others: its unhealed points keep states for each other (`_later`)
    points = [Point(Cell(m, d, s), e, k, h) for m in spec.models for d in spec.datasets for s in spec.strategies
              for e in spec.explainer_list() for h in ((False, True) if spec.heal else (False,))
              for k in range(int(h), spec.max_drop + 1)]
    return Plan(spec, datasets, {m: i.num_layers for m, i in infos.items()},
                {m: i.signature for m, i in infos.items()}, points)
