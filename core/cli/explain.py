"""``explain``: one example's token attributions and their faithfulness; with a mask, also the full model's and
the agreement between the two."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .common import (
    add_data_args,
    add_explainer_args,
    add_mask_args,
    add_model_args,
    add_prompt_args,
    build_setup,
    explain_config,
    mask,
    write_json,
)

if TYPE_CHECKING:
    from ..explain.faithfulness import Faithfulness
    from ..explain.methods import Attribution
    from .common import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("explain", help="token attributions of one example, with their faithfulness")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--example", type=int, required=True, help="index of the example in the split")
    add_mask_args(p)
    add_prompt_args(p)
    add_explainer_args(p, default="lime")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--json", metavar="PATH|-")
    p.set_defaults(run=run)


def _explanation_json(a: Attribution, answers: tuple[str, ...], faith: Faithfulness, cached: bool) -> dict:
    return {
        "explainer": a.explainer, "params": a.params, "granularity": a.granularity,
        "features": [{"feature": n, "score": float(s)} for n, s in zip(a.names, a.scores, strict=True)],
        "predicted": answers[a.predicted], "probability": float(a.probs[a.predicted]),
        "probs": {w: float(p) for w, p in zip(answers, a.probs, strict=True)},
        "seconds": a.seconds, **{f"faithfulness_{k}": v for k, v in faith.as_dict().items()},
        "cached": cached,
    }


def run(args: argparse.Namespace) -> None:
    from ..explain.dataset import pick_example
    from ..study.compare import compare_explanations

    config = explain_config(args)
    setup = build_setup(args)
    lm, ds = setup.lm, setup.ds
    example = pick_example(ds, args.split, args.example)
    drop = mask(args, setup)
    # with a mask, the full model's explanation comes too, for the agreement between the two
    c = compare_explanations(setup, drop, example, config, args.split)
    out: dict = {"model": lm.name, "dataset": ds.name, "split": args.split, "example": args.example,
                 "id": example.id, "text": example.text, "label": ds.label_names[example.label],
                 "dropped_attention_layers": drop}
    if c.other is None:
        out["explanation"] = _explanation_json(c.base, c.answers, c.base_faithfulness, c.base_cached)
    else:
        assert c.other_faithfulness is not None and c.agreement is not None
        out["explanation"] = _explanation_json(c.other, c.answers, c.other_faithfulness, c.other_cached)
        out["full_model"] = _explanation_json(c.base, c.answers, c.base_faithfulness, c.base_cached)
        out["agreement_with_full_model"] = c.agreement.as_dict()
    if args.json:
        write_json(out, args.json)
    if args.json != "-":
        _print(out, config.explainer)


def _print(out: dict, explainer: str) -> None:
    e = out["explanation"]
    drop = out["dropped_attention_layers"]
    print(f"{out['model']}, {out['dataset']} {out['split']} example {out['example']} (label {out['label']}), "
          f"attention dropped: {drop or 'none'}")
    print(f"predicted {e['predicted']} with probability {e['probability']:.3f}; {explainer} took "
          f"{e['seconds']:.2f} s{' (cached)' if e['cached'] else ''}")
    top = max((abs(f["score"]) for f in e["features"]), default=0) or 1.0
    for f in e["features"]:
        bar = ("+" if f["score"] >= 0 else "-") * round(12 * abs(f["score"]) / top)
        print(f"  {f['feature'][:24]:24s} {f['score']:+.4f} {bar}")
    print(f"comprehensiveness {e['faithfulness_comprehensiveness']:.3f}, sufficiency "
          f"{e['faithfulness_sufficiency']:.3f} (AOPC over k = {e['faithfulness_k_percents']}%)")
    if drop:
        g = out["agreement_with_full_model"]
        fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
        print(f"full model predicted {out['full_model']['predicted']} ({out['full_model']['probability']:.3f}); "
              f"agreement top-{g['k_percent']:.0f}%: F1 {fmt(g['f1'])}, IoU {fmt(g['iou'])}, "
              f"Spearman {fmt(g['spearman'])}")
