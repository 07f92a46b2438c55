"""``scores``: the attention layers' importance scores (He et al. 2024) and their order, most redundant first."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .common import Bar, add_data_args, add_model_args, load_data, load_lm, result_cache, write_json

if TYPE_CHECKING:
    from .common import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("scores", help="attention-layer importance scores (He et al. 2024)")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--calibration-n", type=int, default=256, help="train sentences to measure on")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--json", metavar="PATH|-")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ..study.importance import attention_scores, calibration_texts

    lm = load_lm(args)
    texts = calibration_texts(load_data(args), args.calibration_n)
    with Bar("measuring") as bar:
        result = attention_scores(lm, texts, cache=result_cache(args), progress=bar)
    out = {"model": lm.name, "scores": result.scores, "order": result.order,
           "calibration_texts": result.n_texts, "tokens": result.n_tokens,
           "seconds": result.seconds, "cached": result.cached}
    if args.json:
        write_json(out, args.json)
    if args.json != "-":
        print("layer  score")
        for i, s in enumerate(result.scores):
            print(f"{i:5d}  {s:.5f}")
        print("most redundant first:", ",".join(map(str, result.order)))
