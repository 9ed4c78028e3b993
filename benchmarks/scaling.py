"""How generation cost grows with N (target size), d (generator width) and m (Fourier
frequencies): ours against the naive one-batch generator, plus bytes per generated weight.

    python benchmarks/scaling.py                      # writes benchmarks/results/scaling.json
    python benchmarks/scaling.py --plot docs/performance_scaling.png

Targets are MNIST MLPs 784-W-W-10 of growing width W; each point is ``uhn bench``'s
``generate`` case (a fresh process, median of --repeats runs after a warm-up). The naive
generator is measured only while its estimated peak stays under --naive-max-gib. The plot
needs matplotlib, which uhn does not depend on: without it the script writes the JSON and
prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uhn_spec import ExperimentSpec, compile_spec
from uhn_tools.bench.flops import matmul_fraction, useful_flops_per_weight
from uhn_tools.bench.options import GIB, BenchOptions
from uhn_tools.bench.run import naive_estimate, run_case

RESULTS = Path(__file__).resolve().parent / "results" / "scaling.json"
WIDTHS = (16, 32, 64, 128, 256, 512)
HIDDEN = (32, 64, 128, 256)
FREQS = (256, 512, 1024, 2048, 4096)
BASE = {"width": 64, "index_freqs": 2048, "hidden": 128}


@dataclass(frozen=True)
class Point:
    sweep: str  # "N", "d" or "m"
    width: int
    index_freqs: int
    hidden: int


def mlp_spec(point: Point) -> ExperimentSpec:
    w = point.width
    return ExperimentSpec.model_validate(
        {
            "name": f"scaling_w{w}_m{point.index_freqs}_d{point.hidden}",
            "family": "mlp",
            "task": {"dataset": "mnist"},
            "layers": [
                {"kind": "linear", "in_features": 784, "out_features": w, "input_pooling": "reshape_to_2d"},
                {"kind": "linear", "in_features": w, "out_features": w, "norm": True, "shortcut": True},
                {"kind": "linear", "in_features": w, "out_features": 10, "norm": True},
            ],
            "generator": {"index_freqs": point.index_freqs, "hidden": point.hidden},
            "train": {"epochs": 1, "warmup": 0},
        }
    )


def sweep_points(widths: tuple[int, ...]) -> list[Point]:
    points = [Point("N", w, BASE["index_freqs"], BASE["hidden"]) for w in widths]
    points += [Point("d", BASE["width"], BASE["index_freqs"], d) for d in HIDDEN]
    points += [Point("m", BASE["width"], m, BASE["hidden"]) for m in FREQS]
    return points


def measure(point: Point, options: BenchOptions, naive_max_bytes: int, folder: Path) -> dict[str, Any]:
    plan = compile_spec(mlp_spec(point))
    n = plan.targets[0].num_params
    path = folder / "plan.pt"
    plan.save(path)
    ours = run_case(path, "generate", options)
    row: dict[str, Any] = {
        **point.__dict__,
        "num_params": n,
        "useful_flops": useful_flops_per_weight(plan.generator) * n,
    }
    row["ours"] = {k: ours[k] for k in ("seconds", "peak_memory_bytes", "bytes_per_weight")}
    naive = None
    if naive_estimate(plan.generator, n, with_grad=False) <= naive_max_bytes:
        result = run_case(path, "naive_generate", options)
        naive = {k: result[k] for k in ("seconds", "peak_memory_bytes", "bytes_per_weight")}
    row["naive"] = naive
    return row


def run(widths: tuple[int, ...], repeats: int, naive_max_gib: float) -> dict[str, Any]:
    options = BenchOptions(repeats=repeats)
    rows = []
    with tempfile.TemporaryDirectory(prefix="uhn-scaling-") as tmp:
        folder = Path(tmp)
        probe = compile_spec(mlp_spec(Point("N", BASE["width"], BASE["index_freqs"], BASE["hidden"])))
        probe.save(folder / "plan.pt")
        matmul = run_case(folder / "plan.pt", "matmul", options)
        for point in sweep_points(widths):
            row = measure(point, options, int(naive_max_gib * GIB), folder)
            row["matmul_fraction"] = matmul_fraction(
                mlp_spec(point).generator, row["num_params"], row["ours"]["seconds"], matmul["square_flops_per_s"]
            )
            print(format_row(row), file=sys.stderr)
            rows.append(row)
    return {"matmul": matmul, "base": BASE, "points": rows}


def format_row(row: dict[str, Any]) -> str:
    naive = row["naive"]
    naive_text = "naive -" if naive is None else f"naive {naive['seconds']:.3f}s {naive['bytes_per_weight']:.0f} B/w"
    return (
        f"{row['sweep']}: N={row['num_params']:>9,} m={row['index_freqs']:>4} d={row['hidden']:>3}  "
        f"ours {row['ours']['seconds']:.3f}s {row['ours']['bytes_per_weight']:.0f} B/w "
        f"(matmul fraction {row['matmul_fraction']:.2f})  {naive_text}"
    )


def plot(results: dict[str, Any], path: Path) -> bool:
    """Four panels: time per weight and bytes per weight against N, time against d and m.
    Returns False (and plots nothing) where matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    points = results["points"]
    rate = results["matmul"]["square_flops_per_s"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))

    def series(sweep: str, key: str, value) -> tuple[list[float], list[float]]:
        chosen = [p for p in points if p["sweep"] == sweep and (key == "ours" or p[key] is not None)]
        return [p["num_params"] if sweep == "N" else p["hidden" if sweep == "d" else "index_freqs"] for p in chosen], [
            value(p) for p in chosen
        ]

    for ax, sweep, label in (
        (axes[0][0], "N", "N (generated weights)"),
        (axes[1][0], "d", "d (generator width)"),
        (axes[1][1], "m", "m (Fourier frequencies)"),
    ):
        for key, style in (("ours", "o-"), ("naive", "s--")):
            xs, ys = series(sweep, key, lambda p, k=key: p[k]["seconds"] / p["num_params"] * 1e6)
            if xs:
                ax.plot(xs, ys, style, label=key)
        xs, ys = series(sweep, "ours", lambda p: p["useful_flops"] / rate / p["num_params"] * 1e6)
        ax.plot(xs, ys, ":", color="gray", label="useful FLOPs at the 4096^3 matmul rate")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("microseconds per generated weight")
        ax.legend()
    ax = axes[0][1]
    for key, style in (("ours", "o-"), ("naive", "s--")):
        xs, ys = series("N", key, lambda p, k=key: p[k]["bytes_per_weight"])
        if xs:
            ax.plot(xs, ys, style, label=key)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("N (generated weights)")
    ax.set_ylabel("peak bytes per generated weight (above baseline)")
    ax.legend()
    base = results["base"]
    fig.suptitle(
        "uhn generation cost (MNIST MLPs 784-W-W-10; "
        f"base m={base['index_freqs']}, d={base['hidden']}, W={base['width']})"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=list(WIDTHS), help="MLP widths W of the N sweep")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--naive-max-gib", type=float, default=6.0, help="measure the naive generator only below this estimate"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results")
    parser.add_argument("--plot", type=Path, default=None, help="PNG to write (needs matplotlib)")
    args = parser.parse_args()
    results = run(tuple(args.widths), args.repeats, args.naive_max_gib)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    if args.plot is not None:
        print(
            f"wrote {args.plot}"
            if plot(results, args.plot)
            else "matplotlib is not installed: no plot (pip install matplotlib)"
        )


if __name__ == "__main__":
    main()
