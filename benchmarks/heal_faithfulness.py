"""Does healing restore explanation faithfulness and agreement? Full, pruned and healed, paired (prints figures).

For each mask (``--drop-k``, the similarity order `heal --drop-k` uses) and each healing objective, the
pruned model is healed with `heal`'s defaults (adapters from the cache when they exist) and the first
``--faith-n`` test examples of the evaluation are explained under the three models with each
explainer. Per example it records the ERASER comprehensiveness and sufficiency (AOPC over the
explainer's k percents, each on its own model), the same for the seeded random explanation and the
margin between the two (a sharper model moves both curves further), and the agreement (Spearman over
the words, F1 of the top-20% rationales) of the pruned and the healed model's explanation with the
full model's.
Every change is paired over the same examples, with a percentile-bootstrap 95% interval (1,000
shared resamples) and p-value; "beyond noise" means the interval excludes 0. The figures in
docs/healing.md come from

    OMP_NUM_THREADS=1 python benchmarks/heal_faithfulness.py --drop-k 4,8 --json heal-faith.json
    OMP_NUM_THREADS=1 python benchmarks/heal_faithfulness.py --model gemma-3-270m --drop-k 4 --json gemma.json

It is not a test: it trains (minutes per mask and objective on a CPU) and reads the result cache.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.cache import ResultCache
from core.explain.agreement import agreement
from core.explain.dataset import DatasetExplainer, ExplainConfig, dataset_faithfulness
from core.model.loading import DEFAULT_MODEL, load_model
from core.study.healed import healed_setup, release_healed
from core.study.healing import HealConfig, heal
from core.study.importance import attention_scores, calibration_texts
from core.task.data import DEFAULT_DATASET, load_dataset
from core.task.evaluation import EvalConfig, evaluate
from core.task.prompts import PromptConfig
from core.task.setup import Setup
from core.task.uncertainty import mean_interval, paired_mean_difference, resample_counts


def per_example(setup: Setup, drop: Sequence[int], config: ExplainConfig, examples: list) -> dict[str, list]:
    """Each example's comprehensiveness, sufficiency and attribution scores under ``drop``."""
    r = dataset_faithfulness(DatasetExplainer(setup, drop, config, "test"), examples)
    rows = r.per_example()
    out: dict[str, list] = {k: [x[k] for x in rows] for k in ("comprehensiveness", "sufficiency",
                                                              "random_comprehensiveness", "random_sufficiency")}
    # over the random baseline on the same model: a sharper model moves both curves further, whatever it attends to
    out["comprehensiveness_over_random"] = [c - r for c, r in zip(out["comprehensiveness"],
                                                                   out["random_comprehensiveness"], strict=True)]
    out["sufficiency_over_random"] = [s - r for s, r in zip(out["sufficiency"], out["random_sufficiency"], strict=True)]
    return {**out, "scores": [a.scores for a in r.attributions], "predicted": [a.predicted for a in r.attributions]}


def agreements(full: dict, other: dict) -> dict[str, list]:
    """Per example: Spearman and top-20% F1 of ``other``'s explanation with the full model's (None: undefined)."""
    out: dict[str, list] = {"spearman": [], "f1": []}
    for a, b in zip(full["scores"], other["scores"], strict=True):
        g = agreement(a, b)
        out["spearman"].append(g.spearman)
        out["f1"].append(g.f1)
    return out


def change(base: Sequence, other: Sequence, seed: int) -> dict:
    """Mean of other - base over the examples where both are defined, with its paired interval."""
    keep = [i for i, (a, b) in enumerate(zip(base, other, strict=True)) if a is not None and b is not None]
    a, b = [base[i] for i in keep], [other[i] for i in keep]
    d = paired_mean_difference(a, b, resample_counts(len(keep), seed=seed))
    return {"n": len(keep), "change": d.value, "low": d.lo, "high": d.hi, "p": d.p_value,
            "beyond_noise": bool(d.lo > 0 or d.hi < 0)}


def level(values: Sequence, seed: int) -> dict:
    v = [x for x in values if x is not None]
    i = mean_interval(v, resample_counts(len(v), seed=seed))
    return {"n": len(v), "mean": i.value, "low": i.lo, "high": i.hi}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--dataset", default=DEFAULT_DATASET)
    p.add_argument("--drop-k", default="4,8", help="masks: the k most redundant layers, comma-separated")
    p.add_argument("--objectives", default="lm,task")
    p.add_argument("--steps", type=int, default=HealConfig().steps)
    p.add_argument("--explainers", default="occlusion,gradient-x-input")
    p.add_argument("--faith-n", type=int, default=20, help="examples explained (sweep's default)")
    p.add_argument("--seed", type=int, default=0, help="the bootstrap resamples")
    p.add_argument("--json", default=None, help="write every figure here")
    args = p.parse_args()

    lm = load_model(args.model)
    setup = Setup(lm, load_dataset(args.dataset), PromptConfig(), cache=ResultCache())
    examples = evaluate(setup, EvalConfig()).examples[: args.faith_n]
    order = attention_scores(lm, calibration_texts(setup.ds), cache=setup.cache)
    explainers = [ExplainConfig.make(e, {}) for e in args.explainers.split(",")]
    full = {c.explainer: per_example(setup, (), c, examples) for c in explainers}
    out: list[dict] = []
    for k in (int(x) for x in args.drop_k.split(",")):
        drop = sorted(order.most_redundant(k))
        pruned = {c.explainer: per_example(setup, drop, c, examples) for c in explainers}
        for objective in args.objectives.split(","):
            result = heal(setup, drop, HealConfig(objective=objective, steps=args.steps))
            hs = healed_setup(setup, result)
            for c in explainers:
                f, pr = full[c.explainer], pruned[c.explainer]
                h = per_example(hs, drop, c, examples)
                row: dict = {"model": lm.name, "k": k, "drop": drop, "objective": objective, "steps": args.steps,
                             "explainer": c.explainer, "n": len(examples), "heal_seconds": round(result.seconds, 1),
                             "loss_first_last": [float(np.mean(result.losses[:5])), float(np.mean(result.losses[-5:]))]}
                for metric in ("comprehensiveness", "sufficiency", "random_comprehensiveness", "random_sufficiency",
                               "comprehensiveness_over_random", "sufficiency_over_random"):
                    row[metric] = {name: level(m[metric], args.seed) for name, m in
                                   (("full", f), ("pruned", pr), ("healed", h))}
                    row[metric]["pruned - full"] = change(f[metric], pr[metric], args.seed)
                    row[metric]["healed - full"] = change(f[metric], h[metric], args.seed)
                    row[metric]["healed - pruned"] = change(pr[metric], h[metric], args.seed)
                ap, ah = agreements(f, pr), agreements(f, h)
                for metric in ("spearman", "f1"):
                    row[f"agreement_{metric}"] = {"pruned": level(ap[metric], args.seed),
                                                  "healed": level(ah[metric], args.seed),
                                                  "healed - pruned": change(ap[metric], ah[metric], args.seed)}
                row["same_answer_as_full"] = {
                    "pruned": int(np.sum(np.equal(f["predicted"], pr["predicted"]))),
                    "healed": int(np.sum(np.equal(f["predicted"], h["predicted"])))}
                out.append(row)
                print(json.dumps(row), flush=True)
            release_healed(hs.lm)
    if args.json == "-":
        print(json.dumps(out, indent=1))
    elif args.json:
        Path(args.json).write_text(json.dumps(out, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
