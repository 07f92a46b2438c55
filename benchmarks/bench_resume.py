"""What resuming from hidden-state checkpoints saves (prints figures; not a test).

Default model and data, n test examples (+100 validation), no result cache (every number is computed),
resume on and off in the same process, one run each, in turns:

1. **A toggle**: the full model is evaluated first (its states kept), then each layer of ``--layers``
   alone is dropped and evaluated without resume (every layer runs) and with it (it starts at that
   layer); the ratio is printed beside the work bound N / (N - L).
2. **The pruned explanation on the Explanations view**: one test review explained under the full model
   and the suggested drops (`compare_explanations`, ``--explainer``), the pruned side's seconds without
   and with resume.
3. **A similarity sweep** from 0 to ``--max-drop`` layers with faithfulness on ``--faith-n`` examples
   (``--explainer``), without and with resume, on private empty result caches (``--no-sweep`` skips it:
   at the defaults it takes most of an hour).

It ends with the store's peak size and the process's peak memory. Run it on an idle machine:

    python benchmarks/bench_resume.py [--n 200] [--layers 0,7,15,22,25,29] [--max-drop 8] [--faith-n 50]
                                      [--explainer lime] [--dtype fp32|bf16] [--no-sweep]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from core.settings import home  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--n", type=int, default=200)
parser.add_argument("--layers", default="0,7,15,22,25,29")
parser.add_argument("--max-drop", type=int, default=8)
parser.add_argument("--faith-n", type=int, default=50)
parser.add_argument("--explainer", default="lime")
parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
parser.add_argument("--no-sweep", action="store_true")
args = parser.parse_args()

models = home() / "models"  # the converted model is shared; results start from nothing
private = Path(tempfile.mkdtemp(prefix="bench-resume-"))
(private / "models").symlink_to(models, target_is_directory=True)
os.environ["PRUNE_EXPLORER_HOME"] = str(private)

from core.cache import ResultCache  # noqa: E402 - after the home is set
from core.explain.dataset import ExplainConfig  # noqa: E402
from core.model.loading import DEFAULT_MODEL, load_model  # noqa: E402
from core.model.states import STATES  # noqa: E402
from core.study.compare import compare_explanations  # noqa: E402
from core.study.importance import attention_scores, calibration_texts  # noqa: E402
from core.study.sweep import PointConfig, sweep  # noqa: E402
from core.task.data import DEFAULT_DATASET, load_dataset  # noqa: E402
from core.task.evaluation import EvalConfig, evaluate  # noqa: E402
from core.task.setup import Setup  # noqa: E402

lm = load_model(DEFAULT_MODEL, args.dtype)
ds = load_dataset(DEFAULT_DATASET)
uncached = Setup(lm, ds)
n_layers = lm.num_layers
peak_store = 0


def timed(resume: bool, work):
    """Seconds of ``work()`` with resume on or off (off: the store is bypassed, as PRUNE_EXPLORER_RESUME=0)."""
    global peak_store
    STATES.enabled = resume
    try:
        start = time.perf_counter()
        value = work()
        return time.perf_counter() - start, value
    finally:
        STATES.enabled = True
        peak_store = max(peak_store, STATES.info()["bytes"])


print(f"{lm.name} ({args.dtype}) on {ds.name}: n = {args.n} (+100 validation), {n_layers} layers, "
      f"{os.cpu_count()} cores, state budget {STATES.max_bytes / 2**30:.1f} GiB")
config = EvalConfig(n=args.n, val_n=100)
full_seconds, _ = timed(True, lambda: evaluate(uncached, config))
print(f"\n1. a toggle (the full model first: {full_seconds:.2f} s, its states kept)")
print("layer  without  with resume  ratio  work bound  share of the bound")
for layer in (int(x) for x in args.layers.split(",")):
    mask = EvalConfig(n=args.n, val_n=100, drop=(layer,))
    off, _ = timed(False, lambda mask=mask: evaluate(uncached, mask))
    on, _ = timed(True, lambda mask=mask: evaluate(uncached, mask))
    bound = n_layers / (n_layers - layer)
    print(f"{layer:5d}  {off:6.2f} s  {on:8.2f} s  {off / on:5.2f}x  {bound:9.2f}x  {off / on / bound:17.0%}")

drop = tuple(sorted(attention_scores(lm, calibration_texts(ds)).most_redundant(4)))
example = ds.splits["test"][0]
explain = ExplainConfig.make(args.explainer)
print(f"\n2. the Explanations view: test review 0 ({len(example.text.split())} words), {args.explainer}, "
      f"full model then layers {','.join(map(str, drop))} dropped")
for resume in (False, True):
    setup = Setup(lm, ds, cache=ResultCache(private / f"explain-{resume}"))
    seconds, c = timed(resume, lambda setup=setup: compare_explanations(setup, drop, example, explain))
    print(f"  resume {'on ' if resume else 'off'}: both {seconds:.2f} s; full {c.base.seconds:.2f} s, "
          f"pruned {c.other.seconds:.2f} s")

if not args.no_sweep:
    order = attention_scores(lm, calibration_texts(ds)).order
    point = PointConfig(eval=config, explain=explain, faith_n=args.faith_n)
    print(f"\n3. a similarity sweep, 0 to {args.max_drop} layers dropped in the order "
          f"{','.join(map(str, order[:args.max_drop]))}, {args.explainer} on {args.faith_n} examples per mask")
    spent = {}
    for resume in (False, True):
        setup = Setup(lm, ds, cache=ResultCache(private / f"sweep-{resume}"))
        spent[resume], _ = timed(resume, lambda setup=setup: sweep(setup, order, args.max_drop, point, latency=False))
        print(f"  resume {'on ' if resume else 'off'}: {spent[resume]:.0f} s")
    layers_run = n_layers + sum(n_layers - order[k - 1] for k in range(1, args.max_drop + 1))  # step k adds order[k-1]
    bound = (args.max_drop + 1) * n_layers / layers_run
    print(f"  {spent[False] / spent[True]:.2f}x faster; the work bound of this order is {bound:.2f}x (each mask "
          "starting at the layer its step adds)")

rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(f"\nstate store: peak {peak_store / 2**20:.0f} MiB, {STATES.info()['evictions']} evictions; "
      f"process peak memory {rss:.2f} GiB")
