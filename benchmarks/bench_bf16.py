"""CPU bf16 against fp32: every metric paired over the same examples, and the scoring time (prints figures).

For each model (the default and all-MiniLM-L6-v2) and each mask (0, 4 and 8 most redundant layers for
the default model; 0, 2 and 4 for MiniLM's 6 layers, or ``--masks``), the model is evaluated in fp32 and
in bf16 on the same n test examples (+100 validation for the temperature), with no result cache, and
the bf16 result is compared with the fp32 one as two "models" on the same examples: each metric's
paired difference (bf16 - fp32) with its 95% interval and verdict, McNemar's flips, and the seconds of
each. This is the evidence behind the choice of the CPU default (docs/measurements.md).

    python benchmarks/bench_bf16.py [--n 200] [--models smollm2-135m-instruct,all-minilm-l6-v2]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from core.metrics import METRICS  # noqa: E402
from core.model.loading import cpu_bf16, load_model  # noqa: E402
from core.study.compare import paired_stats  # noqa: E402
from core.study.importance import attention_scores, calibration_texts  # noqa: E402
from core.task.data import DEFAULT_DATASET, load_dataset  # noqa: E402
from core.task.evaluation import EvalConfig, evaluate  # noqa: E402
from core.task.setup import Setup  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--n", type=int, default=200)
parser.add_argument("--models", default="smollm2-135m-instruct,all-minilm-l6-v2")
parser.add_argument("--masks", default=None, help="numbers of layers to drop, e.g. 0,4,8 (default per model)")
args = parser.parse_args()

native, why = cpu_bf16()
print(f"CPU bf16: {why}")
ds = load_dataset(DEFAULT_DATASET)
keys = ("accuracy", "ece", "smooth_ece", "brier", "nll")
for name in args.models.split(","):
    fp32, bf16 = load_model(name, "fp32"), load_model(name, "bf16")
    order = attention_scores(fp32, calibration_texts(ds)).order
    ks = [int(k) for k in args.masks.split(",")] if args.masks else ([0, 4, 8] if fp32.num_layers > 8 else [0, 2, 4])
    print(f"\n{name} on {ds.name}, n = {args.n} (+100 validation), bf16 - fp32 paired over the same examples")
    for k in ks:
        config = EvalConfig(n=args.n, val_n=100, drop=tuple(sorted(order[:k])))
        a = evaluate(Setup(fp32, ds), config)
        b = evaluate(Setup(bf16, ds), config)
        stats = paired_stats(a, b)
        cells = []
        for key in keys:
            d = stats.difference[key]
            verdict = "beyond noise" if d.beyond_noise else "within noise"
            cells.append(f"{METRICS[key].title} {a.metrics.as_dict()[key]:.3f} -> {b.metrics.as_dict()[key]:.3f} "
                         f"({d.value:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}] {verdict})")
        m = stats.mcnemar
        print(f"  {k} dropped: {a.seconds:.1f} s fp32, {b.seconds:.1f} s bf16 ({a.seconds / b.seconds:.2f}x); "
              f"flips {m.right_to_wrong} right->wrong / {m.wrong_to_right} wrong->right (McNemar p = {m.p_value:.2g})")
        for cell in cells:
            print(f"      {cell}")
