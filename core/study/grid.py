"""The study grid: every model × dataset × strategy × explainer × number of layers dropped, resumable.

A *point* is one mask's row of metrics (`evaluate_point`): the first ``k`` layers of a strategy's
order dropped from a model, evaluated on a dataset, with the faithfulness of one explainer when
``faith_n`` > 0. A *cell* is a (model, dataset, strategy): its order is computed once and serves its
points.

* **Planning** (`plan`) reads only configs and data: unknown models, datasets, strategies or
  explainers, and a ``max_drop`` beyond a model's layers, are refused before any model loads.
* **Resuming**: each finished point's row (and each cell's order) is stored by the driver under a
  content key of everything that defines it (the model's file signature, the data's fingerprint, the
  settings), so a rerun computes only the points the cache lacks.
* **Healing** (`GridSpec.heal`): every pruned point gets a healed twin, a row of its own whose ``healed``
  column names the settings (``healed (lm, 50 steps)``; the others say ``not healed``): the pruned model
  healed with LoRA under the same mask (`core.study.sweep.healed_point`), its metrics and changes from
  the full model in the usual columns, its paired changes from the unhealed pruned model in
  `HEALED_POINT_COLUMNS`. Its key adds the healing settings; the unhealed points keep theirs.
* **Engines**: ``local`` runs the grid in this process; ``ray`` runs it on Ray actors, one per GPU or
  per group of CPU cores. An actor loads a model once and evaluates many points; each actor takes its
  cells in model order, so it loads each model at most once. Rows come back to the driver, which
  writes the cache and the tables, so workers need no shared disk. A worker that dies is restarted
  by Ray and its points retried; the driver keeps one row per point whatever arrives twice.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..cache import ResultCache, cache_key
from ..errors import UserError
from ..explain.dataset import ExplainConfig
from ..explain.methods import EXPLAINERS
from ..progress import StageProgress
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


class GridWorker:
    """Evaluates the points of cells; keeps one model (the last one asked for) loaded.

    The same class runs in-process (``local``) and as a Ray actor (``ray``). ``cache_root`` is the
    result cache its intermediate results (scores, explanations) go to on its own machine; None
    keeps them in memory only.
    """

    def __init__(self, spec: GridSpec, datasets: dict[str, Dataset], cache_root: str | None,
                 threads: int | None = None) -> None:
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.spec, self.datasets = spec, datasets
        self.cache = ResultCache(cache_root) if cache_root else None
        self._lm: Any = None
        self.loads = 0

    def _setup(self, cell: Cell) -> Any:
        from ..model.loading import load_model, release_model
        from ..task.setup import Setup

        if self._lm is None or self._lm[0] != cell.model:
            if self._lm is not None:
                release_model(self._lm[1])
                self._lm = None
                gc.collect()
            self._lm = (cell.model, load_model(cell.model, self.spec.dtype, self.spec.device))
            self.loads += 1
        return Setup(self._lm[1], self.datasets[cell.dataset], self.spec.prompt, cache=self.cache)

    def order(self, plan_strategy: StrategyConfig, cell: Cell, progress: StageProgress | None = None) -> list[int]:
        from .strategies import layer_order

        return layer_order(self._setup(cell), plan_strategy, progress)

    def point(self, cell: Cell, order: list[int], dropped: int, config: PointConfig, later: Sequence[int] = (),
              healed: bool = False) -> dict:
        """The point of ``cell`` with ``dropped`` layers of ``order`` dropped; ``later``: the numbers dropped of
        the cell's points this worker evaluates next (their explanations start from states this one keeps).
        ``healed``: the pruned model healed with the grid's settings (`core.study.sweep.healed_point`)."""
        from dataclasses import replace

        from .sweep import evaluate_point, healed_point

        if healed:
            return healed_point(self._setup(cell), order[:dropped], replace(config, heal=self.spec.heal))
        return evaluate_point(self._setup(cell), order[:dropped], config,
                              next_masks=[order[:k] for k in later])

    def pid(self) -> int:
        return os.getpid()


@dataclass
class Task:
    """A cell's work: its order (None: to compute) and the points of it still to evaluate."""

    cell: Cell
    order: list[int] | None
    points: list[Point]


def _later(points: Sequence[Point], i: int) -> list[int]:
    """The numbers dropped of the points after the ``i``-th with its explainer (and, like it, healed or not): what it
    should keep states for."""
    return [p.dropped for p in points[i + 1:] if (p.explainer, p.healed) == (points[i].explainer, points[i].healed)]


Event = tuple[str, Any, Any]
"""("order", cell, order), ("point", point, row) or ("failed", point, message), as the engine finishes them."""


class LocalEngine:
    """The grid in this process, one point after another, cells in model order."""

    name = "local"

    def __init__(self, plan: Plan, cache_root: str | None) -> None:
        self.plan = plan
        self.worker = GridWorker(plan.spec, plan.datasets, cache_root)

    def run(self, tasks: list[Task], on_masks: Callable[[Cell, int], None] | None = None) -> Iterator[Event]:
        """The tasks' events; ``on_masks(cell, done)`` hears each candidate mask a greedy order has tried."""
        for task in sorted(tasks, key=lambda t: self.plan.spec.models.index(t.cell.model)):
            order = task.order
            if order is None:
                def tried(_what: str, done: float, _total: int, cell: Cell = task.cell) -> None:
                    if on_masks:
                        on_masks(cell, int(done))
                order = self.worker.order(self.plan.strategy(task.cell), task.cell, tried)
                yield "order", task.cell, order
            for i, point in enumerate(task.points):
                yield "point", point, self.worker.point(task.cell, order, point.dropped,
                                                        self.plan.point_config(point.explainer),
                                                        _later(task.points, i), point.healed)

    def describe(self) -> dict:
        return {"engine": "local", "workers": 1, "model_loads": self.worker.loads}

    def close(self) -> None:
        """Nothing to release: the worker's model goes with the engine."""


class RayEngine:
    """The grid on Ray actors: a local Ray runtime when ``address`` is None, else the cluster there."""

    name = "ray"

    def __init__(self, plan: Plan, cache_root: str | None, address: str | None = None, workers: int | None = None,
                 cpus_per_worker: int = 1, max_restarts: int = 3) -> None:
        import ray

        self.plan = plan
        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     **({} if address else {"num_cpus": max(os.cpu_count() or 1, cpus_per_worker)}))
            self.started = True
        gpu = plan.spec.device.startswith("cuda")
        resources = ray.cluster_resources()
        if gpu and resources.get("GPU", 0) < 1:
            raise UserError("--device cuda was asked for, but the Ray cluster has no GPU")
        room = int(resources.get("GPU", 0)) if gpu else max(1, int(resources.get("CPU", 1)) // cpus_per_worker)
        count = max(1, min(workers or room, len(plan.cells()) or 1))
        remote = ray.remote(GridWorker).options(
            num_cpus=cpus_per_worker, num_gpus=1 if gpu else 0, max_restarts=max_restarts,
            max_task_retries=max_restarts)
        self._datasets = ray.put(plan.datasets)  # held here so that a restarted actor can read it again
        self.actors = [remote.remote(plan.spec, self._datasets, cache_root, cpus_per_worker) for _ in range(count)]
        self.address = address

    def run(self, tasks: list[Task], on_masks: Callable[[Cell, int], None] | None = None) -> Iterator[Event]:
        """The tasks' events as the actors finish them; a greedy order's candidate masks are heard all at once,
        ``on_masks(cell, all of them)``, when the order arrives (the actor's progress stays on its machine)."""
        ray = self.ray
        load = [0] * len(self.actors)
        models: list[set[str]] = [set() for _ in self.actors]
        pending: dict[Any, tuple[str, Any]] = {}
        for task in sorted(tasks, key=lambda t: (self.plan.spec.models.index(t.cell.model), -len(t.points))):
            # the least loaded actor, preferring one that already has this model
            i = min(range(len(self.actors)), key=lambda a: (load[a], task.cell.model not in models[a]))
            actor = self.actors[i]
            load[i] += len(task.points) + (task.order is None)
            models[i].add(task.cell.model)
            order: Any = task.order
            if order is None:
                order = actor.order.remote(self.plan.strategy(task.cell), task.cell)
                pending[order] = ("order", task.cell)
            for j, point in enumerate(task.points):  # an actor runs its calls in order: a cell's points resume
                ref = actor.point.remote(task.cell, order, point.dropped, self.plan.point_config(point.explainer),
                                         _later(task.points, j), point.healed)
                pending[ref] = ("point", point)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            kind, what = pending.pop(done[0])
            try:
                value = ray.get(done[0])
                if kind == "order" and on_masks:
                    on_masks(what, self.plan.order_masks(what))
                yield kind, what, value
            except (ray.exceptions.RayError, UserError) as err:
                yield "failed", what, f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"

    def describe(self) -> dict:
        return {"engine": "ray", "workers": len(self.actors), "address": self.address or "local runtime",
                "ray": self.ray.__version__}

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        if self.started:
            self.ray.shutdown()


@dataclass
class StudyResult:
    table: pd.DataFrame
    run: dict
    """What run.json holds: the settings, the engine, and the points computed, cached and failed."""
    out: Path | None

    @property
    def computed(self) -> int:
        return self.run["computed"]

    @property
    def cached(self) -> int:
        return self.run["cached"]

    @property
    def failed(self) -> list[str]:
        return self.run["failed"]


def run_study(spec: GridSpec, out: str | Path | None = None, engine: str = "local", address: str | None = None,
              workers: int | None = None, cpus_per_worker: int = 1, cache: ResultCache | None = None,
              progress: Callable[[int, int], None] | None = None,
              on_point: Callable[[Point, Any], None] | None = None) -> StudyResult:
    """Evaluate every point of ``spec`` that ``cache`` lacks, and write the study's files to ``out``.

    ``progress`` gets (masks done, masks in all), cached ones included: each point is one mask, and a greedy
    cell's order counts the candidate masks its search tries, so a long search moves the count too. ``on_point``
    gets each computed point and the engine (the tests kill workers with it). Points that fail even after Ray's
    retries are listed in the result and in run.json; the others are kept and written.
    """
    start = time.perf_counter()
    checked = plan(spec, engine, check_device=engine == "local" or address is None)
    cache = cache if cache is not None else ResultCache()
    rows: dict[Point, dict] = {}
    for point in checked.points:
        row = cache.get(checked.point_key(point), required=("dropped", "accuracy"))
        if row is not None:
            rows[point] = {**row, "cached": True}
    n_cached = len(rows)
    missing = [p for p in checked.points if p not in rows]
    tasks = []
    for cell in checked.cells():
        todo = [p for p in missing if p.cell == cell]
        if todo:
            stored = cache.get(checked.order_key(cell), required=("order",))
            tasks.append(Task(cell, stored["order"] if stored else None, todo))
    searching = {t.cell: checked.order_masks(t.cell) for t in tasks if t.order is None}
    tried = dict.fromkeys(searching, 0)
    total = len(checked.points) + sum(searching.values())

    def report() -> None:
        if progress:
            progress(len(rows) + sum(tried.values()), total)

    def on_masks(cell: Cell, done: int) -> None:
        tried[cell] = min(done, searching.get(cell, 0))
        report()

    report()
    failed: list[str] = []
    runner = None
    if tasks:
        root = str(cache.root)
        runner = (LocalEngine(checked, root) if engine == "local" else
                  RayEngine(checked, root, address, workers, cpus_per_worker))
        try:
            for kind, what, value in runner.run(tasks, on_masks):
                if kind == "order":
                    cache.put(checked.order_key(what), {"order": list(value)})
                    tried[what] = searching.get(what, 0)
                elif kind == "failed":
                    failed.append(f"{_label(what)}: {value}")
                elif what not in rows:  # a retried point may arrive twice: keep the first
                    cache.put(checked.point_key(what), value)
                    rows[what] = {**value, "cached": False}
                    if on_point:
                        on_point(what, runner)
                report()
        finally:
            described = runner.describe()
            runner.close()
    else:
        described = {"engine": engine, "workers": 0}
    table = _table(checked, rows)
    run = {"settings": _settings(spec), "engine": described, "points": total, "computed": len(rows) - n_cached,
           "cached": n_cached, "failed": failed, "seconds": round(time.perf_counter() - start, 2),
           "python": platform.python_version(), "layers": checked.layers}
    result = StudyResult(table, run, Path(out) if out else None)
    if out is not None:
        write_outputs(result, Path(out))
    return result


def _label(what: Point | Cell) -> str:
    cell = what.cell if isinstance(what, Point) else what
    tail = (f" / {what.explainer or '-'} / {what.dropped} dropped{' / healed' if what.healed else ''}"
            if isinstance(what, Point) else " (order)")
    return f"{cell.model} / {cell.dataset} / {cell.strategy}{tail}"


def _table(checked: Plan, rows: dict[Point, dict]) -> pd.DataFrame:
    columns = checked.columns()
    heal = checked.spec.heal
    records = [{"model": p.cell.model, "dataset": p.cell.dataset, "strategy": p.cell.strategy,
                "explainer": p.explainer or "",
                **({"healed": heal_label(heal) if p.healed else NOT_HEALED} if heal is not None else {}),
                **{k: v for k, v in rows[p].items() if k in columns}}
               for p in checked.points if p in rows]
    return pd.DataFrame(records, columns=columns)


def _settings(spec: GridSpec) -> dict:
    settings = asdict(spec)
    settings["explainers"] = list(spec.explainer_list()) if spec.faith_n > 0 else []
    return settings


def write_outputs(result: StudyResult, out: Path) -> None:
    """results.csv, results.parquet, run.json and report.html in ``out`` (created if needed)."""
    from .report import render_study

    out.mkdir(parents=True, exist_ok=True)
    result.table.to_csv(out / "results.csv", index=False)
    result.table.to_parquet(out / "results.parquet", index=False)
    (out / "run.json").write_text(json.dumps(result.run, indent=2, default=str) + "\n", encoding="utf-8")
    (out / "report.html").write_text(render_study(result.table, result.run), encoding="utf-8")

