"""``report``: a self-contained HTML page from a sweep table."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .common import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("report", help="a self-contained HTML page (works offline) from a sweep CSV")
    p.add_argument("sweep_csv")
    p.add_argument("--out", required=True, metavar="PATH.html")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ..study.report import write_report

    print(f"wrote {write_report(args.sweep_csv, args.out)}")
