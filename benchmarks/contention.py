"""Contention benchmark: `uhn train` idle and next to busy processes, old and new CPU default.

    python benchmarks/contention.py [--spec specs/digits_mlp.yaml] [--epochs N]
                                    [--competitors 2] [--timeout 900] [--json FILE]

Runs the spec (default: the digits demo, both phases) four times in fresh processes: with
torch's defaults (``UHN_CPU_POLICY=torch``, the old behaviour) and with uhn's shared-machine
default (``UHN_CPU_POLICY=shared``: passive OpenMP waiting, threads from the free cores; see
uhn_runtime/cpu_policy.py), each on the idle machine and next to ``--competitors`` busy
processes that this script starts (one spinning Python thread each, killed after the run and
never outliving ``--timeout``). OMP_NUM_THREADS and OMP_WAIT_POLICY are removed from the runs'
environment so each policy chooses. Prints the training seconds (summary.json: the phases,
without start-up) and the ratios, and writes them as JSON. Targets (issue #9): loaded at most
3x idle with the new default, and idle at most 10% slower than the old default.

Run it on an otherwise quiet machine: the idle runs must be idle.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from uhn_runtime.train.run_dir import cpu_model

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = REPO / "specs" / "digits_mlp.yaml"
POLICIES = ("torch", "shared")
# A busy process: one thread spinning in Python until its deadline (argv[1] seconds).
SPIN = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


@contextmanager
def busy_processes(count: int, seconds: float) -> Iterator[None]:
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN, str(seconds)]) for _ in range(count)]
    try:
        time.sleep(0.5 if count else 0)  # running before the measured run starts
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def train_seconds(spec: Path, policy: str, epochs: int | None, timeout: float) -> dict[str, Any]:
    """One `uhn train` in a fresh process: its summary's training seconds and the wall time."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env["UHN_CPU_POLICY"] = policy
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        command = [sys.executable, "-m", "uhn_cli", "train", str(spec), "--out", str(run), "--device", "cpu"]
        if epochs is not None:
            command += ["--set", f"train.epochs={epochs}", "--set", f"train.warmup={min(epochs, 1)}"]
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"uhn train failed ({done.returncode}):\n{done.stderr[-2000:]}")
        summary = json.loads((run / "summary.json").read_text())
    return {
        "seconds": summary["seconds"],
        "wall_seconds": round(wall, 3),
        "threads": summary.get("threads"),
        "omp_wait_policy": summary.get("omp_wait_policy"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs (default: the spec's)")
    parser.add_argument("--competitors", type=int, default=2, help="busy processes in the loaded runs")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one run may take")
    parser.add_argument("--json", type=Path, default=Path("contention.json"), help="where to write the results")
    args = parser.parse_args()
    # A SIGTERM unwinds like Ctrl-C, so the runs and busy processes this script started end too.
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))

    results: dict[str, dict[str, Any]] = {}
    for load, competitors in (("idle", 0), ("loaded", args.competitors)):
        for policy in POLICIES:
            print(f"measuring {policy} default, {load} ({competitors} busy processes) ...", file=sys.stderr)
            with busy_processes(competitors, args.timeout):
                result = results[f"{policy}_{load}"] = train_seconds(args.spec, policy, args.epochs, args.timeout)
            print(f"  {result['seconds']:.1f} s, {result['threads']} threads", file=sys.stderr)
    seconds = {name: r["seconds"] for name, r in results.items()}
    ratios = {
        "old_loaded_over_idle": seconds["torch_loaded"] / seconds["torch_idle"],
        "new_loaded_over_idle": seconds["shared_loaded"] / seconds["shared_idle"],  # target <= 3
        "new_idle_over_old_idle": seconds["shared_idle"] / seconds["torch_idle"],  # target <= 1.10
        "old_loaded_over_new_loaded": seconds["torch_loaded"] / seconds["shared_loaded"],
    }
    report = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "spec": str(args.spec),
        "epochs": args.epochs,
        "competitors": args.competitors,
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_model(), "load_at_start": os.getloadavg()},
        "runs": results,
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
    }
    for name, r in results.items():
        print(f"{name:16} {r['seconds']:8.1f} s  ({r['threads']} threads, OMP_WAIT_POLICY {r['omp_wait_policy']})")
    for name, value in report["ratios"].items():
        print(f"{name:28} {value:.2f}")
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
