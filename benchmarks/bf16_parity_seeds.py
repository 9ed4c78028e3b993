"""bf16 against fp32 accuracy over several seeds: is the difference more than seed noise?

    python benchmarks/bf16_parity_seeds.py [--spec specs/digits_mlp.yaml] [--seeds 0 1 2 3 4]
                                           [--precision fp32 --precision bf16] [--timeout 900]
                                           [--json benchmarks/results/bf16_parity_seeds_cpu.json]

Runs ``uhn train SPEC --precision P --set train.seed=S --device cpu`` in a fresh process for
every precision and seed (OMP_NUM_THREADS=1 unless the caller sets it), and reports per
precision the mean and sample standard deviation of the test metric of each phase the spec
trains (UHN, and direct with ``train.compare_direct``), then the difference of the means
(bf16 - fp32) beside the seed spread: the standard error of that difference and the largest
per-precision standard deviation. One run says little when a figure moves by a test image or
two (issue 17's digits figure moved by 0.55 points, 2 of 360 images); this says whether
that is the precision or the seed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from uhn_runtime.run_dir import cpu_model
from uhn_spec.files import atomic_write_text

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = REPO / "specs" / "digits_mlp.yaml"
PHASES = ("uhn", "direct")


def train_summary(spec: Path, precision: str, seed: int, timeout: float) -> dict[str, Any]:
    """One `uhn train` in a fresh process; its summary.json."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        command = [
            sys.executable, "-m", "uhn_cli", "train", str(spec), "--out", str(run), "--device", "cpu",
            "--precision", precision, "--set", f"train.seed={seed}",
        ]  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise SystemExit(f"uhn train failed ({done.returncode}):\n{done.stderr[-2000:]}")
        return json.loads((run / "summary.json").read_text())


def spread(values: list[float]) -> dict[str, Any]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "values": values,
    }


def compare(runs: dict[str, dict[int, dict[str, Any]]], low: str, reference: str) -> dict[str, Any]:
    """Per phase: each precision's spread and the difference of means against the seed noise."""
    result: dict[str, Any] = {}
    for phase in PHASES:
        by_precision = {p: [runs[p][s][phase] for s in sorted(runs[p])] for p in (reference, low)}
        if any(v is None for values in by_precision.values() for v in values):
            continue  # the spec does not train this phase
        stats = {p: spread(values) for p, values in by_precision.items()}
        n_low, n_ref = len(by_precision[low]), len(by_precision[reference])
        standard_error = (stats[low]["std"] ** 2 / n_low + stats[reference]["std"] ** 2 / n_ref) ** 0.5
        difference = stats[low]["mean"] - stats[reference]["mean"]
        result[phase] = {
            **stats,
            f"{low}_minus_{reference}": difference,
            "standard_error_of_difference": standard_error,
            "difference_in_standard_errors": difference / standard_error if standard_error else None,
            "largest_seed_std": max(s["std"] for s in stats.values()),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--precision", action="append", default=None, help="repeatable; default fp32 and bf16 (the first is the reference)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one run may take")
    parser.add_argument("--json", type=Path, default=Path("bf16_parity_seeds.json"), help="where to write the results")
    args = parser.parse_args()
    precisions = args.precision or ["fp32", "bf16"]
    if len(precisions) != 2:
        raise SystemExit("--precision: give two (reference first), e.g. --precision fp32 --precision bf16")
    # A SIGTERM unwinds like Ctrl-C, so the run this script started ends too.
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))

    load_at_start = os.getloadavg()
    runs: dict[str, dict[int, dict[str, Any]]] = {p: {} for p in precisions}
    for seed in args.seeds:  # precisions interleaved, so a change of load hits both alike
        for precision in precisions:
            summary = train_summary(args.spec, precision, seed, args.timeout)
            runs[precision][seed] = {phase: summary[phase] for phase in PHASES} | {
                "seconds": summary["seconds"],
                "precision_reason": summary["precision_reason"],
            }
            print(f"seed {seed} {precision}: uhn {summary['uhn']} direct {summary['direct']} ({summary['seconds']:.0f} s)", file=sys.stderr)
    reference, low = precisions
    report = {
        "command": " ".join(["python", "benchmarks/bf16_parity_seeds.py", *sys.argv[1:]]),
        "spec": str(args.spec),
        "seeds": args.seeds,
        "threads": os.environ.get("OMP_NUM_THREADS", "1"),
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_model(), "load_at_start": load_at_start, "load_at_end": os.getloadavg()},
        "runs": {p: {str(s): r for s, r in by_seed.items()} for p, by_seed in runs.items()},
        "comparison": compare(runs, low, reference),
    }
    for phase, c in report["comparison"].items():
        print(
            f"{phase:7} {reference} {c[reference]['mean']:.4f} +- {c[reference]['std']:.4f}   "
            f"{low} {c[low]['mean']:.4f} +- {c[low]['std']:.4f}   "
            f"difference {c[f'{low}_minus_{reference}']:+.4f} (standard error {c['standard_error_of_difference']:.4f})"
        )
    atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
