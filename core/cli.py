"""Command line: ``python -m core {models,datasets,evaluate,scores,explain,explainers,sweep,report,cache}``.

Problems the user can fix print one ``error:`` line (no traceback) and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .errors import UserError


def _print_table(rows: list[dict], columns: Sequence[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))


def _write_json(obj: dict, target: str) -> None:
    text = json.dumps(obj, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    if target == "-":
        print(text)
    else:
        with open(target, "w", encoding="utf-8") as f:
            f.write(text + "\n")


class _Bar:
    """A tqdm progress bar on stderr, fed by the core's (done, total) callbacks."""

    def __init__(self, desc: str, unit: str = "ex") -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.desc = desc
        self.unit = unit
        self.bar = None

    def __call__(self, done: float, total: int) -> None:
        if self.bar is None:
            self.bar = self._tqdm(total=total, desc=self.desc, unit=self.unit, file=sys.stderr, leave=False)
        self.bar.total = total
        self.bar.n = round(done, 2)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from .model.loading import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL, help="preset name, hub id or local folder")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--trust-remote-code", action="store_true", help="run model code from the hub (off by default)")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    from .task.data import DEFAULT_DATASET

    p.add_argument("--dataset", default=DEFAULT_DATASET, help="preset name or a .csv / .jsonl path")
    p.add_argument("--text-column", default="text", help="own files: the column holding the text")
    p.add_argument("--label-column", default="label", help="own files: the column holding the label")
    p.add_argument("--label-names", default=None, help="own files: comma-separated label names, in index order")


def _add_prompt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", default="few-shot", choices=["zero-shot", "few-shot", "chat"])
    p.add_argument("--shots", type=int, default=None, help="demonstrations (default: one per label)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-input-tokens", type=int, default=256)


def _add_mask_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--drop-attn", default="", help="attention layers to drop, e.g. 25,26,29")
    p.add_argument("--drop-k", type=int, default=None, help="drop the k most redundant attention layers")
    p.add_argument("--refit-head", action="store_true",
                   help="encoder classifiers: fit the head on the pruned encoder (default: the full one, frozen)")


def _add_explainer_args(p: argparse.ArgumentParser, default: str | None) -> None:
    from .explain.features import GRANULARITIES, REMOVALS
    from .explain.methods import EXPLAINERS

    p.add_argument("--explainer", default=default, help=f"one of {', '.join(EXPLAINERS)}")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="explainer parameter, e.g. n_samples=300 (repeatable; see 'explainers')")
    p.add_argument("--granularity", default="word", choices=list(GRANULARITIES))
    p.add_argument("--removal", default="delete", choices=list(REMOVALS),
                   help="how a removed word disappears: deleted, or replaced by the pad / unknown token")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the model presets")
    p.add_argument("--json", metavar="PATH|-")

    p = sub.add_parser("datasets", help="list the dataset presets")
    p.add_argument("--json", metavar="PATH|-")

    p = sub.add_parser("evaluate", help="accuracy and calibration of a model, optionally with attention dropped")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--n", type=int, default=200, help="examples of the split to evaluate (default 200)")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    _add_mask_args(p)
    _add_prompt_args(p)
    p.add_argument("--balanced", action="store_true", help="sample the same number of examples per label")
    p.add_argument("--bins", type=int, default=15, help="equal-width bins for ECE (default 15)")
    p.add_argument("--val-n", type=int, default=100, help="validation examples for temperature scaling (0: off)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--no-cache", action="store_true", help="recompute instead of reading the result cache")
    p.add_argument("--json", metavar="PATH|-", help="write the result as JSON ('-' for stdout)")
    p.add_argument("--predictions", metavar="PATH.csv", help="write one row per example")
    p.add_argument("--faithfulness", action="store_true",
                   help="also explain the examples and measure comprehensiveness and sufficiency (ERASER)")
    p.add_argument("--faithfulness-n", type=int, default=None,
                   help="explain only the first N evaluated examples (default: all)")
    _add_explainer_args(p, default="lime")

    p = sub.add_parser("explain", help="token attributions of one example, with their faithfulness")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--example", type=int, required=True, help="index of the example in the split")
    _add_mask_args(p)
    _add_prompt_args(p)
    _add_explainer_args(p, default="lime")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--json", metavar="PATH|-")

    p = sub.add_parser("explainers", help="list the explainers and their default parameters")
    p.add_argument("--json", metavar="PATH|-")

    p = sub.add_parser("scores", help="attention-layer importance scores (He et al. 2024)")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--calibration-n", type=int, default=256, help="train sentences to measure on")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--json", metavar="PATH|-")

    p = sub.add_parser("sweep", help="drop 0..K attention layers in a strategy's order: one row of metrics each")
    _add_model_args(p)
    _add_data_args(p)
    from .study.strategies import DEFAULT_STRATEGY, STRATEGIES

    p.add_argument("--strategy", default=DEFAULT_STRATEGY, help=f"one of {', '.join(STRATEGIES)}")
    p.add_argument("--max-drop", type=int, default=8, help="drop up to K layers (default 8)")
    p.add_argument("--n", type=int, default=200, help="test examples per point (default 200)")
    p.add_argument("--val-n", type=int, default=100, help="validation examples for temperature scaling")
    p.add_argument("--faith-n", type=int, default=20,
                   help="examples explained per point for faithfulness (default 20; 0: none)")
    p.add_argument("--calibration-n", type=int, default=32, help="greedy strategies: validation examples judged")
    p.add_argument("--steps", type=int, default=None, help="greedy strategies: layers chosen greedily (default K)")
    p.add_argument("--candidates", type=int, default=None,
                   help="greedy strategies: most redundant remaining layers tried per step (default: all)")
    p.add_argument("--weights", default="1,1,1", help="trust-greedy: weights of accuracy, ECE, comprehensiveness")
    p.add_argument("--refit-head", action="store_true",
                   help="encoder classifiers: re-fit the head on each pruned encoder")
    _add_prompt_args(p)
    _add_explainer_args(p, default="occlusion")
    p.add_argument("--out", required=True, metavar="PATH.csv", help="the table; settings go to PATH.csv.json")

    p = sub.add_parser("report", help="a self-contained HTML page (works offline) from a sweep CSV")
    p.add_argument("sweep_csv")
    p.add_argument("--out", required=True, metavar="PATH.html")

    p = sub.add_parser("cache", help="show or clear the result cache")
    p.add_argument("action", choices=["info", "clear"])
    return parser


def _dataset(args: argparse.Namespace):
    from .task.data import load_dataset

    names = [x.strip() for x in args.label_names.split(",")] if args.label_names else None
    return load_dataset(args.dataset, text_column=args.text_column, label_column=args.label_column,
                        label_names=names)


def _cmd_models(args: argparse.Namespace) -> None:
    from .model.loading import list_presets

    rows = list_presets()
    if args.json:
        _write_json({"models": rows}, args.json)
        return
    for r in rows:
        r["offline"] = "yes" if r["offline"] else ("no: " + r["install"] if r["install"] else "no (hub)")
        r["name"] = str(r["name"]) + (" (default)" if r["default"] else "") + (" (opt-in)" if r["opt_in"] else "")
    _print_table(rows, ["name", "family", "size", "task", "download", "licence", "offline"])
    print("opt-in models are not part of the default setup: installing one accepts its licence terms")


def _cmd_datasets(args: argparse.Namespace) -> None:
    from .task.data import list_presets

    rows = list_presets()
    if args.json:
        _write_json({"datasets": rows}, args.json)
        return
    for r in rows:
        r["size"] = r["size"] if r["size"] is not None else "hub"
        r["name"] = str(r["name"]) + (" (default)" if r["default"] else "")
    _print_table(rows, ["name", "task", "labels", "size", "licence", "source"])


def _drop(args: argparse.Namespace, lm, ds) -> list[int]:
    """The mask from --drop-attn or --drop-k (the k layers with the lowest importance scores)."""
    from .cache import ResultCache
    from .model.pruning import parse_layer_list, validate_mask
    from .study.importance import attention_scores, calibration_texts

    drop = list(validate_mask(parse_layer_list(args.drop_attn), lm.num_layers))
    if args.drop_k is not None:
        if drop:
            raise UserError("give either --drop-attn or --drop-k, not both")
        drop = attention_scores(lm, calibration_texts(ds), ResultCache()).most_redundant(args.drop_k)
    return sorted(drop)


def _prompt_config(args: argparse.Namespace):
    from .task.prompts import PromptConfig

    return PromptConfig(style=args.prompt, shots=args.shots, seed=args.seed, max_input_tokens=args.max_input_tokens)


def _explain_config(args: argparse.Namespace):
    from .explain.dataset import ExplainConfig

    params = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--param takes KEY=VALUE (got '{item}')")
        params[key.strip()] = value.strip()
    config = ExplainConfig.make(args.explainer, params, granularity=args.granularity, removal=args.removal)
    config.validate()
    return config


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from .cache import ResultCache
    from .explain.dataset import Explainer, dataset_faithfulness
    from .model.loading import load_model
    from .task.evaluation import EvalConfig, evaluate
    from .task.head import builder_for

    explain_config = _explain_config(args) if args.faithfulness else None
    if args.faithfulness_n is not None and args.faithfulness_n < 1:
        raise UserError(f"--faithfulness-n must be at least 1 (got {args.faithfulness_n})")
    lm = load_model(args.model, args.dtype, args.device, args.trust_remote_code)
    ds = _dataset(args)
    cache = None if args.no_cache else ResultCache()
    drop = _drop(args, lm, ds)
    config = EvalConfig(
        n=args.n, split=args.split, drop=tuple(drop), prompt=_prompt_config(args),
        seed=args.seed, balanced=args.balanced, n_bins=args.bins, val_n=args.val_n,
        batch_size=args.batch_size, refit_head=args.refit_head,
    )
    bar = _Bar("scoring")
    try:
        result = evaluate(lm, ds, config, cache, progress=bar)
    finally:
        bar.close()
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    summary = result.summary()
    predictions = result.predictions()
    faith = None
    if explain_config is not None:
        builder = builder_for(lm, ds, config.prompt, cache, drop, args.refit_head)
        explainer = Explainer(lm, ds, builder, args.split, drop, explain_config, cache)
        examples = result.examples[: args.faithfulness_n]
        bar = _Bar(f"explaining ({explain_config.explainer})")
        try:
            faith = dataset_faithfulness(explainer, examples, progress=bar)
        finally:
            bar.close()
        summary.update(faith.summary())
        rows = {r["id"]: r for r in faith.per_example()}
        for col in ("comprehensiveness", "sufficiency", "random_comprehensiveness", "random_sufficiency"):
            predictions[col] = [rows[i][col] if i in rows else None for i in predictions["id"]]
    if args.predictions:
        predictions.to_csv(args.predictions, index=False)
    if args.json:
        _write_json(summary, args.json)
    if args.json != "-":
        m = result.metrics
        print(f"{result.model} on {result.dataset} ({result.split}, n={result.n}), attention dropped: "
              f"{result.dropped_attention_layers or 'none'}")
        print(f"accuracy {m.accuracy:.3f}  ECE {m.ece:.3f}  adaptive ECE {m.adaptive_ece:.3f}  MCE {m.mce:.3f}  "
              f"Brier {m.brier:.3f}  NLL {m.nll:.3f}")
        if result.temperature is not None and result.metrics_temperature_scaled is not None:
            print(f"temperature {result.temperature:.3f} (fitted on validation): "
                  f"ECE {result.metrics_temperature_scaled.ece:.3f}")
        print(f"{result.seconds:.2f} s{' (from cache)' if result.cached else ''}")
        if faith is not None:
            f = faith.summary()
            print(f"{f['explainer']} on {f['faithfulness_n']} examples: comprehensiveness {f['comprehensiveness']:.3f} "
                  f"(random {f['random_baseline_comprehensiveness']:.3f}), sufficiency {f['sufficiency']:.3f} "
                  f"(random {f['random_baseline_sufficiency']:.3f}); {f['faithfulness_seconds']:.1f} s")


def _explanation_json(a, builder, faith) -> dict:
    answers = list(builder.answer_words)
    return {
        "explainer": a.explainer, "params": a.params, "granularity": a.granularity,
        "features": [{"feature": n, "score": float(s)} for n, s in zip(a.names, a.scores, strict=True)],
        "predicted": answers[a.predicted], "probability": float(a.probs[a.predicted]),
        "probs": {w: float(p) for w, p in zip(answers, a.probs, strict=True)},
        "seconds": a.seconds, **{f"faithfulness_{k}": v for k, v in faith.as_dict().items()},
    }


def _cmd_explain(args: argparse.Namespace) -> None:
    from .cache import ResultCache
    from .explain.agreement import agreement
    from .explain.dataset import Explainer, pick_example
    from .model.loading import load_model
    from .task.head import builder_for

    config = _explain_config(args)
    lm = load_model(args.model, args.dtype, args.device, args.trust_remote_code)
    ds = _dataset(args)
    example = pick_example(ds, args.split, args.example)
    drop = _drop(args, lm, ds)
    cache = None if args.no_cache else ResultCache()
    prompt = _prompt_config(args)
    out: dict = {"model": lm.name, "dataset": ds.name, "split": args.split, "example": args.example,
                 "id": example.id, "text": example.text, "label": ds.label_names[example.label],
                 "dropped_attention_layers": drop}
    # with a mask, the full model's explanation comes too, for the agreement between the two
    runs = {"explanation": drop, "full_model": []} if drop else {"explanation": []}
    scores = {}
    for field, mask in runs.items():
        builder = builder_for(lm, ds, prompt, cache, mask, args.refit_head)
        explainer = Explainer(lm, ds, builder, args.split, mask, config, cache)
        a, hit = explainer.explain(example)
        faith = explainer.faithfulness([example], [a])[0]
        scores[field] = a.scores
        out[field] = {**_explanation_json(a, builder, faith), "cached": hit}
    if drop:
        out["agreement_with_full_model"] = agreement(scores["full_model"], scores["explanation"]).as_dict()
    if args.json:
        _write_json(out, args.json)
    if args.json == "-":
        return
    e = out["explanation"]
    print(f"{lm.name}, {ds.name} {args.split} example {args.example} (label {out['label']}), "
          f"attention dropped: {drop or 'none'}")
    print(f"predicted {e['predicted']} with probability {e['probability']:.3f}; {config.explainer} took "
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


def _cmd_explainers(args: argparse.Namespace) -> None:
    from .explain.methods import EXPLAINERS

    rows = [{"name": e.name, "title": e.title, "kind": e.kind, "defaults": dict(e.defaults),
             "choices": {k: list(v) for k, v in e.choices.items()}, "description": e.description}
            for e in EXPLAINERS.values()]
    if args.json:
        _write_json({"explainers": rows}, args.json)
        return
    for r in rows:
        r["defaults"] = ", ".join(f"{k}={v}" for k, v in r["defaults"].items()) or "-"
    _print_table(rows, ["name", "kind", "defaults", "description"])
    print("all: --granularity word|token, --removal delete|pad|unk; faithfulness at k = 1, 5, 10, 20, 50%")


def _cmd_scores(args: argparse.Namespace) -> None:
    from .cache import ResultCache
    from .model.loading import load_model
    from .study.importance import attention_scores, calibration_texts

    lm = load_model(args.model, args.dtype, args.device, args.trust_remote_code)
    texts = calibration_texts(_dataset(args), args.calibration_n)
    bar = _Bar("measuring")
    try:
        result = attention_scores(lm, texts, None if args.no_cache else ResultCache(), progress=bar)
    finally:
        bar.close()
    out = {"model": lm.name, "scores": result.scores, "order": result.order,
           "calibration_texts": result.n_texts, "tokens": result.n_tokens,
           "seconds": result.seconds, "cached": result.cached}
    if args.json:
        _write_json(out, args.json)
    if args.json != "-":
        print("layer  score")
        for i, s in enumerate(result.scores):
            print(f"{i:5d}  {s:.5f}")
        print("most redundant first:", ",".join(map(str, result.order)))


def _weights(raw: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(x) for x in raw.split(","))
    except ValueError:
        raise UserError(f"--weights takes three numbers, e.g. 1,1,1 (got '{raw}')") from None
    if len(values) != 3:
        raise UserError(f"--weights takes three numbers: accuracy, ECE, comprehensiveness (got '{raw}')")
    return values  # type: ignore[return-value]


def _cmd_sweep(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from .cache import ResultCache
    from .model.loading import load_model
    from .study.strategies import StrategyConfig, layer_order
    from .study.sweep import PointConfig, sweep
    from .task.evaluation import EvalConfig

    strategy = StrategyConfig(name=args.strategy, seed=args.seed, calibration_n=args.calibration_n,
                              steps=args.steps or args.max_drop, candidates=args.candidates,
                              weights=_weights(args.weights))
    strategy.validate()
    explain = _explain_config(args) if args.faith_n > 0 else None
    if not str(args.out).endswith(".csv"):
        raise UserError(f"--out must name a .csv file (got '{args.out}')")
    lm = load_model(args.model, args.dtype, args.device, args.trust_remote_code)
    ds = _dataset(args)
    if not 0 <= args.max_drop <= lm.num_layers:
        raise UserError(f"--max-drop must be between 0 and {lm.num_layers} (got {args.max_drop})")
    cache = ResultCache()
    prompt = _prompt_config(args)
    bar = _Bar(f"ordering ({args.strategy})", unit="mask")
    try:
        order = layer_order(lm, ds, strategy, prompt, cache, progress=lambda what, d, t: bar(d, t))
    finally:
        bar.close()
    config = PointConfig(eval=EvalConfig(n=args.n, prompt=prompt, seed=args.seed, val_n=args.val_n,
                                         refit_head=args.refit_head),
                         explain=explain, faith_n=max(args.faith_n, 1))
    bar = _Bar("sweeping", unit="point")
    try:
        table = sweep(lm, ds, order, args.max_drop, config, cache, progress=lambda what, d, t: bar(d, t))
    finally:
        bar.close()
    table.to_csv(args.out, index=False)
    settings = {"model": lm.name, "dataset": ds.name, "strategy": asdict(strategy), "order": order,
                "n": args.n, "val_n": args.val_n, "prompt": asdict(prompt),
                "explainer": explain.explainer if explain else None,
                "explainer_params": explain.resolved_params() if explain else None,
                "faith_n": args.faith_n, "removal": args.removal, "refit_head": args.refit_head}
    _write_json(settings, args.out + ".json")
    print(table.round(3).to_string(index=False))
    print(f"wrote {args.out} and {args.out}.json")


def _cmd_report(args: argparse.Namespace) -> None:
    from .study.report import write_report

    print(f"wrote {write_report(args.sweep_csv, args.out)}")


def _cmd_cache(args: argparse.Namespace) -> None:
    from .cache import ResultCache

    cache = ResultCache()
    if args.action == "clear":
        print(f"removed {cache.clear()} cached results from {cache.root}")
    else:
        info = cache.info()
        print(f"{info['entries']} results, {info['bytes'] / 1e6:.1f} MB of {info['max_bytes'] / 1e6:.0f} MB "
              f"in {info['path']}")


COMMANDS = {"models": _cmd_models, "datasets": _cmd_datasets, "evaluate": _cmd_evaluate,
            "scores": _cmd_scores, "explain": _cmd_explain, "explainers": _cmd_explainers, "sweep": _cmd_sweep,
            "report": _cmd_report, "cache": _cmd_cache}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished results are in the cache", file=sys.stderr)
        return 130
    return 0
