"""How often each interval method covers the true value (prints the table of docs/uncertainty.md; not a test).

Every calibration error (ECE, adaptive ECE, MCE, smooth ECE), the Brier score and the NLL, of one
model and of the paired difference of two, is simulated where its true value is known
(`core.task.uncertainty.coverage` says how), and each method's 95% interval is checked against it
trial after trial. The table gives, per method, metric, n and calibration shape: the coverage (of
the interval as shown, raised to contain its estimate) with its Monte-Carlo standard error, then
the mean width and how often the method's own interval already contained the estimate.

    OMP_NUM_THREADS=1 python benchmarks/coverage_study.py --trials 600 --workers 2 --json coverage.json
    python benchmarks/coverage_study.py --from-json coverage.json   # the tables again, or of several runs

At 600 trials per cell the standard error of a 95% coverage is 0.9 points, so 92% and 95% are
3.4 standard errors apart. One trial costs about 1 s for one model and 2-3 s for a pair on one
core (smooth ECE dominates), so the full table takes hours: ``--sizes``, ``--shapes`` and
``--pairs`` run a part.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from core.task.uncertainty import coverage

TITLES = {"ece": "ECE", "adaptive_ece": "adaptive ECE", "mce": "MCE", "smooth_ece": "smooth ECE",
          "brier": "Brier", "nll": "NLL"}


def _run(job: tuple[str, bool, int, int, int, int, int, tuple[str, ...]]) -> list[dict]:
    """One worker's share: trials ``start`` to ``stop`` of one cell."""
    name, paired, n, start, stop, resamples, seed, keys = job
    populations = coverage.PAIRS[name] if paired else (coverage.SHAPES[name],)
    cells = coverage.study([(name, populations, n)], stop - start, seed=seed, n_resamples=resamples, keys=keys,
                           first=start)
    return [c.as_dict() | {"covered": c.covered, "raw_count": c.raw_brackets, "width_sum": c.width} for c in cells]


def _merge(parts: list[list[dict]]) -> list[dict]:
    merged: dict[tuple, dict] = {}
    for part in parts:
        for row in part:
            key = (row["shape"], row["n"], row["method"], row["metric"])
            m = merged.setdefault(key, {**row, "trials": 0, "covered": 0, "raw_count": 0, "width_sum": 0.0})
            for k in ("trials", "covered", "raw_count", "width_sum"):
                m[k] += row[k]
    out = []
    for m in merged.values():
        c = m["covered"] / m["trials"]
        out.append({"method": m["method"], "metric": m["metric"], "n": m["n"], "shape": m["shape"],
                    "paired": m["paired"], "truth": m["truth"], "trials": m["trials"], "coverage": c,
                    "se": (c * (1 - c) / m["trials"]) ** 0.5, "raw_brackets": m["raw_count"] / m["trials"],
                    "width": m["width_sum"] / m["trials"]})
    return out


def _groups(rows: list[dict]) -> list[tuple[bool, str, str, int]]:
    return sorted({(r["paired"], r["metric"], r["shape"], r["n"]) for r in rows},
                  key=lambda g: (g[0], list(TITLES).index(g[1]), g[2], g[3]))


def table(rows: list[dict], entry=lambda r: f"{100 * r['coverage']:.1f} ± {100 * r['se']:.1f}") -> str:
    """Markdown: one line per metric, model(s) and n; one column per method (by default coverage % ± SE)."""
    methods = [m for m in coverage.METHODS if any(r["method"] == m for r in rows)]
    out = ["| metric | model(s) | true value | n | trials | " + " | ".join(methods) + " |",
           "|---|---|---|---|---|" + "---|" * len(methods)]
    for group in _groups(rows):
        cell = {r["method"]: r for r in rows if (r["paired"], r["metric"], r["shape"], r["n"]) == group}
        first = next(iter(cell.values()))
        paired, metric, shape, n = group
        what = f"{TITLES[metric]} change" if paired else TITLES[metric]
        out.append(f"| {what} | {shape} | {first['truth']:+.4f} | {n} | {first['trials']} | "
                   + " | ".join(entry(cell[m]) if m in cell else "" for m in methods) + " |")
    return "\n".join(out) + "\n"


def widths(rows: list[dict]) -> str:
    """The same table with each interval's mean width and how often the method's own interval contained the
    estimate before it was raised to it."""
    return table(rows, lambda r: f"{r['width']:.3f} ({100 * r['raw_brackets']:.0f}%)")


def _report(rows: list[dict], header: str) -> None:
    print(header)
    print("Coverage (% of trials whose interval, as shown, contains the true value) ± its Monte-Carlo SE:\n")
    print(table(rows))
    print("Mean width of the interval as shown (in brackets: how often the method's own interval already "
          "contained the estimate):\n")
    print(widths(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=600, help="trials per cell (default 600)")
    parser.add_argument("--sizes", default="50,200,1000", help="sample sizes (default 50,200,1000)")
    parser.add_argument("--shapes", default=",".join(coverage.SHAPES), help="single-model shapes ('' for none)")
    parser.add_argument("--pairs", default=";".join(coverage.PAIRS), help="pairs, ';'-separated ('' for none)")
    parser.add_argument("--metrics", default=",".join(coverage.KEYS), help="metrics (default: all)")
    parser.add_argument("--resamples", type=int, default=1000, help="resamples and simulations per trial")
    parser.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--from-json", nargs="+", metavar="FILE", help="print the tables of saved rows instead")
    args = parser.parse_args()
    if args.from_json:
        rows = [r for f in args.from_json for r in json.loads(Path(f).read_text())]
        _report(rows, f"Coverage of 95% intervals, from {', '.join(args.from_json)}.\n")
        return
    sizes = [int(x) for x in args.sizes.split(",") if x]
    cells = [(s, False, n) for s in args.shapes.split(",") if s for n in sizes]
    cells += [(p, True, n) for p in args.pairs.split(";") if p for n in sizes]
    unknown = [c[0] for c in cells if c[0] not in (coverage.PAIRS if c[1] else coverage.SHAPES)]
    if unknown:
        sys.exit(f"unknown shape(s) or pair(s): {unknown}; known: {list(coverage.SHAPES)}, {list(coverage.PAIRS)}")
    keys = tuple(k for k in args.metrics.split(",") if k)
    if not keys or set(keys) - set(coverage.KEYS):
        sys.exit(f"--metrics must name some of {', '.join(coverage.KEYS)} (got {args.metrics!r})")
    chunk = max(1, -(-args.trials // (4 * args.workers)))  # a few chunks per worker, to balance
    jobs = [(name, paired, n, start, min(start + chunk, args.trials), args.resamples, args.seed, keys)
            for name, paired, n in cells for start in range(0, args.trials, chunk)]
    started = time.time()
    with ProcessPoolExecutor(args.workers) as pool:
        parts = []
        for i, part in enumerate(pool.map(_run, jobs)):
            parts.append(part)
            print(f"  {i + 1}/{len(jobs)} chunks, {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    rows = _merge(parts)
    _report(rows, f"Coverage of 95% intervals, {args.trials} trials per cell, {args.resamples} resamples and "
                  f"simulations per trial, seed {args.seed}, {datetime.date.today()}, {time.time() - started:.0f} s "
                  f"on {args.workers} worker(s).\n")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
