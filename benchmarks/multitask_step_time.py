"""Multi-task step time against the members' own runs (issue 12: within 10% of the mean
single-task step time weighted by the sampling probabilities).

    python benchmarks/multitask_step_time.py MULTITASK_RUN SINGLE_RUN... [--all-intervals] [--json FILE]

Reads ``step_seconds`` (the mean seconds per training step of a log interval, evaluations and
checkpoints left out) and the multi-task run's ``step_seconds_by_task`` from the runs'
metrics.jsonl; each SINGLE_RUN is one member trained alone (``uhn train MULTITASK --model
NAME``), matched to its member by the run's target name. By default the first interval of
every run is left out (it builds the targets and their layouts). Prints

* ``vs_probabilities``: the multi-task mean step over sum_i p_i * (member i's own step), the
  target's ratio;
* ``vs_draws``: the same with the shares the run actually drew instead of p_i (the draw's
  randomness left out);
* per member: its steps inside the multi-task run over its own run's (1.0: no overhead from
  sharing the generator and switching tasks).

All runs should run one after another on the same quiet machine; ratios between runs at
different loads measure the load, not uhn.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from uhn_spec.files import atomic_write_text


def train_records(run: Path, all_intervals: bool) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    timed = [r for r in records if r.get("event") == "train" and r.get("phase") == "uhn" and "step_seconds" in r]
    if not timed:
        sys.exit(f"error: {run}: no train record with step_seconds (a run by a uhn that records step times?)")
    return timed if all_intervals or len(timed) == 1 else timed[1:]


def interval_steps(records: list[dict[str, Any]]) -> list[int]:
    """Steps in each interval (records of the whole run): consecutive step counters' difference."""
    ends = [int(r["step"]) for r in records]
    return [end - start for start, end in zip([0, *ends[:-1]], ends)]


def weighted_mean(values: list[float], weights: list[float]) -> float:
    return sum(v * w for v, w in zip(values, weights)) / sum(weights)


def measure(multitask: Path, singles: list[Path], all_intervals: bool) -> dict[str, Any]:
    summary = json.loads((multitask / "summary.json").read_text())
    probabilities: dict[str, float] = summary["task_probabilities"]
    draws: dict[str, int] = summary["task_sampling"]["draws"]
    mt = train_records(multitask, all_intervals)
    mt_all = train_records(multitask, True)
    steps = interval_steps(mt_all)[len(mt_all) - len(mt) :]
    mt_step = weighted_mean([r["step_seconds"] for r in mt], steps)
    own: dict[str, float] = {}
    for run in singles:
        name = json.loads((run / "summary.json").read_text())["spec"]
        if name not in probabilities:
            sys.exit(f"error: {run}: trains {name!r}, not a member of {multitask} ({', '.join(probabilities)})")
        records = train_records(run, all_intervals)
        everything = train_records(run, True)
        own[name] = weighted_mean(
            [r["step_seconds"] for r in records], interval_steps(everything)[len(everything) - len(records) :]
        )
    missing = set(probabilities) - set(own)
    if missing:
        sys.exit(f"error: no single-task run for {', '.join(sorted(missing))}; pass one run folder per member")
    total_draws = sum(draws.values())
    by_task = {
        name: statistics.fmean(r["step_seconds_by_task"][name] for r in mt if name in r["step_seconds_by_task"])
        for name in own
    }
    return {
        "multitask_step_seconds": mt_step,
        "single_step_seconds": own,
        "vs_probabilities": mt_step / sum(p * own[n] for n, p in probabilities.items()),
        "vs_draws": mt_step / sum(draws[n] / total_draws * own[n] for n in own),
        "member_step_vs_own_run": {name: by_task[name] / own[name] for name in own},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("multitask", type=Path)
    parser.add_argument("singles", type=Path, nargs="+")
    parser.add_argument("--all-intervals", action="store_true", help="keep each run's first interval")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    report = measure(args.multitask, args.singles, args.all_intervals)
    print(json.dumps(report, indent=2))
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
