"""The listing commands, ``models``, ``datasets`` and ``explainers``, and ``cache``: they load no model.

Each command has its own ``add_*_parser`` (so that `core.cli` can list the commands in help order) and
sets its run function as the parser's ``run`` default.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .common import print_table, write_json

if TYPE_CHECKING:
    from .common import Subparsers


def add_models_parser(sub: Subparsers) -> None:
    p = sub.add_parser("models", help="list the model presets")
    p.add_argument("--json", metavar="PATH|-")
    p.set_defaults(run=run_models)


def run_models(args: argparse.Namespace) -> None:
    from ..model.loading import list_presets

    rows = list_presets()
    if args.json:
        write_json({"models": rows}, args.json)
        return
    for r in rows:
        r["offline"] = "yes" if r["offline"] else ("no: " + r["install"] if r["install"] else "no (hub)")
        r["name"] = str(r["name"]) + (" (default)" if r["default"] else "") + (" (opt-in)" if r["opt_in"] else "")
    print_table(rows, ["name", "family", "size", "task", "download", "licence", "offline"])
    print("opt-in models are not part of the default setup: installing one accepts its licence terms")


def add_datasets_parser(sub: Subparsers) -> None:
    p = sub.add_parser("datasets", help="list the dataset presets")
    p.add_argument("--json", metavar="PATH|-")
    p.set_defaults(run=run_datasets)


def run_datasets(args: argparse.Namespace) -> None:
    from ..task.data import list_presets

    rows = list_presets()
    if args.json:
        write_json({"datasets": rows}, args.json)
        return
    for r in rows:
        r["size"] = r["size"] if r["size"] is not None else "hub"
        r["name"] = str(r["name"]) + (" (default)" if r["default"] else "")
    print_table(rows, ["name", "task", "labels", "size", "licence", "source"])


def add_explainers_parser(sub: Subparsers) -> None:
    p = sub.add_parser("explainers", help="list the explainers and their default parameters")
    p.add_argument("--json", metavar="PATH|-")
    p.set_defaults(run=run_explainers)


def run_explainers(args: argparse.Namespace) -> None:
    from ..explain.methods import EXPLAINERS

    rows = [{"name": e.name, "title": e.title, "kind": e.kind, "defaults": dict(e.defaults),
             "choices": {k: list(v) for k, v in e.choices.items()}, "description": e.description}
            for e in EXPLAINERS.values()]
    if args.json:
        write_json({"explainers": rows}, args.json)
        return
    for r in rows:
        r["defaults"] = ", ".join(f"{k}={v}" for k, v in r["defaults"].items()) or "-"
    print_table(rows, ["name", "kind", "defaults", "description"])
    print("all: --granularity word|token, --removal delete|pad|unk; faithfulness at k = 1, 5, 10, 20, 50%")


def add_cache_parser(sub: Subparsers) -> None:
    p = sub.add_parser("cache", help="show or clear the result cache")
    p.add_argument("action", choices=["info", "clear"])
    p.set_defaults(run=run_cache)


def run_cache(args: argparse.Namespace) -> None:
    from ..cache import ResultCache

    cache = ResultCache()
    if args.action == "clear":
        print(f"removed {cache.clear()} cached results from {cache.root}")
    else:
        info = cache.info()
        print(f"{info['entries']} results, {info['bytes'] / 1e6:.1f} MB of {info['max_bytes'] / 1e6:.0f} MB "
              f"in {info['path']}")
