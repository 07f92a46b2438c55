"""Command line: ``python -m core <command>``: models, datasets, evaluate, compare, repair, heal, explain,
explainers, scores, sweep, study, report, cache.

Problems the user can fix print one ``error:`` line (no traceback) and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..errors import UserError
from . import catalog, compare, evaluate, explain, heal, repair, report, scores, study, sweep

if TYPE_CHECKING:
    from .common import Subparsers

COMMANDS: tuple[Callable[[Subparsers], None], ...] = (
    catalog.add_models_parser, catalog.add_datasets_parser, evaluate.add_parser, compare.add_parser, repair.add_parser,
    heal.add_parser, explain.add_parser, catalog.add_explainers_parser, scores.add_parser, sweep.add_parser,
    study.add_parser, report.add_parser, catalog.add_cache_parser,
)
"""Each adds its command's parser, with the function that runs it as the parser's ``run`` default; in help order."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add_parser in COMMANDS:
        add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished results are in the cache", file=sys.stderr)
        return 130
    return 0
