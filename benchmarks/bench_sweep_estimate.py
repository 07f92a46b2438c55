"""How well the Trade-offs view's sweep estimate predicts a sweep's time (prints figures; not a test).

On a private, empty result cache: compute the first ``--first`` masks of a similarity sweep on the
default model and data, then ask `estimate_sweep` for the rest and time them. Both parts run in this
one process, one after the other, so the ratio holds on a busy machine better than either time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from core.settings import home

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--n", type=int, default=200)
parser.add_argument("--first", type=int, default=3, help="masks computed before the estimate is read")
parser.add_argument("--max-drop", type=int, default=7)
args = parser.parse_args()

models = home() / "models"  # the converted model is shared; results start from nothing
private = Path(tempfile.mkdtemp(prefix="bench-estimate-"))
(private / "models").symlink_to(models, target_is_directory=True)
os.environ["PRUNE_EXPLORER_HOME"] = str(private)

from core.cache import ResultCache  # noqa: E402 - after the home is set
from core.model.loading import DEFAULT_MODEL, load_model  # noqa: E402
from core.study.strategies import layer_order  # noqa: E402
from core.study.sweep import PointConfig, estimate_sweep, sweep  # noqa: E402
from core.task.data import DEFAULT_DATASET, load_dataset  # noqa: E402
from core.task.evaluation import EvalConfig  # noqa: E402
from core.task.prompts import PromptConfig  # noqa: E402
from core.task.setup import Setup  # noqa: E402

setup = Setup(load_model(DEFAULT_MODEL), load_dataset(DEFAULT_DATASET), PromptConfig(), cache=ResultCache())
config = PointConfig(eval=EvalConfig(n=args.n, val_n=100))
order = layer_order(setup)
start = time.perf_counter()
sweep(setup, order, args.first - 1, config, latency=False)
first = time.perf_counter() - start
estimate = estimate_sweep(setup, order, args.max_drop, config)
start = time.perf_counter()
sweep(setup, order, args.max_drop, config, latency=False)
rest = time.perf_counter() - start
print(f"n = {args.n} (+100 validation), similarity order, masks 0..{args.max_drop}, no faithfulness")
print(f"first {args.first} masks: {first:.1f} s ({first / args.first:.1f} s per mask)")
print(f"estimate for the other {estimate.to_compute} (cached {sum(estimate.cached)}): {estimate.seconds:.1f} s "
      f"({estimate.basis})")
print(f"measured: {rest:.1f} s; estimate / measured = {estimate.seconds / rest:.2f}")
