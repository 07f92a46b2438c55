"""The study grid: every model × dataset × strategy × explainer × number of layers dropped, resumable.

What a grid is, its cells and points, their checks and the keys its rows are stored under (`GridSpec`,
`plan`) live in `core.study.grid_plan` and are imported from here too; this module runs a plan and writes
its files (`run_study`).

* **Resuming**: each finished point's row (and each cell's order) is stored by the driver under its
  plan's key, so a rerun computes only the points the cache lacks.
* **Healing** (`GridSpec.heal`): every pruned point also gets a healed twin, a row of its own
  (`core.study.sweep.healed_point`).
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..cache import ResultCache
from ..errors import UserError
from ..progress import StageProgress
from ..task.data import Dataset
from .grid_plan import (  # noqa: F401 - the grid's plan is imported from here
    COLUMNS_OUT,
    ENGINES,
    GREEDY,
    KEYS,
    NOT_HEALED,
    RUN_DEPENDENT,
    Cell,
    GridSpec,
    Plan,
    Point,
    heal_label,
    plan,
)
from .strategies import StrategyConfig
from .sweep import PointConfig


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

