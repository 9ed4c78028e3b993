"""The paper's Tables 1 and 2 (and a one-row demo table) as data for `uhn reproduce`.

One row is a setting: the spec that trains it (relative to the uhn checkout), per budget the
``--set`` overrides, a one-line summary of what they change, the seeds and an estimate of
the seconds one seed takes on an idle 2-core CPU (UHN plus direct; the ETA starts from it),
the paper's figures, and the grid the direct baseline's learning rate is chosen from on a
validation split (``reproduce.py``, ``select_direct_lr``).

Paper figures are those /work/shared/docs/paper-summary.txt gives (Tables 1 and 2, and the
single-task kv figures of its multi-task table); settings it gives no figure for have None,
never a guess. Seeds and the paper schedules are reference-facts section 8: seeds 21962,
59358, 78117, graphs ten seeds.

CPU-budget estimates come from docs/performance.md's step times (mnist_mlp 0.63 s and
cifar10_cnn20 4.95 s per train step with the paper's generators, idle) and docs/results.md's
measured runs (Cora, KAN, MNIST MLP); rows without a measured run are scaled by their number
of weights and marked "estimate" in their ``changes`` line.
"""

from __future__ import annotations

from typing import Any

PAPER_SEEDS = [21962, 59358, 78117]
# The paper averages 10 seeds on the graph rows; its budget here runs the first 5 (a CPU affords them).
GRAPH_SEEDS = [*PAPER_SEEDS, 23547, 81797, 81105, 95819, 42270, 24014, 20964]

# Smaller generators for the CPU budget (docs/results.md: Cora at F_v 256, d 64).
SMALL_GRAPH_GENERATOR = ["generator.index_freqs=256", "generator.hidden=64"]
SMALL_GENERATOR = ["generator.index_freqs=512", "generator.hidden=64"]

# Direct-lr grids (a factor of about 3 apart around the usual direct recipe of each kind).
IMAGE_GRID = [3e-4, 1e-3, 3e-3]
CNN_GRID = [1e-3, 2e-3, 5e-3]
GRAPH_GRID = [1e-3, 5e-3, 1e-2]
TEXT_GRID = [1e-4, 3e-4, 1e-3]
KAN_GRID = [1e-3, 3e-3, 1e-2]


def _budgets(cpu_set: list[str], changes: str, cpu_seconds: float, paper_seconds: float | None, graph: bool) -> dict[str, Any]:
    return {
        "cpu": {"set": cpu_set, "changes": changes, "seeds": PAPER_SEEDS if graph else PAPER_SEEDS[:1], "estimate_seconds": cpu_seconds},
        "paper": {
            "set": ["train.precision=fp32"],
            "changes": "the paper's schedule (the spec as shipped), in fp32",
            "seeds": GRAPH_SEEDS[:5] if graph else PAPER_SEEDS,
            "estimate_seconds": paper_seconds,
        },
    }


def _graph_row(dataset: str, model: str, paper: dict[str, float | None], cpu_seconds: float, paper_seconds: float | None) -> dict[str, Any]:
    cpu_set = [*SMALL_GRAPH_GENERATOR, "train.epochs=200", "train.lr=1e-3"]
    return {
        "name": f"{dataset}_{model.lower()}",
        "dataset": dataset,
        "model": model,
        "metric": "accuracy",
        "spec": f"specs/{dataset}_{model.lower()}.yaml",
        "budgets": _budgets(
            cpu_set, "generator F_v 256, d 64 (50k trainable instead of 592k); 200 epochs; lr 1e-3", cpu_seconds, paper_seconds, graph=True
        ),
        "paper": paper,
        "direct_lr_grid": GRAPH_GRID,
    }


def _pubmed_row(model: str, paper: dict[str, float | None]) -> dict[str, Any]:
    return {
        "name": f"pubmed_{model.lower()}",
        "dataset": "pubmed",
        "model": model,
        "metric": "accuracy",
        "note": "PubMed is not in ../shared/data (docs/data.md); CiteSeer stands in, see the citeseer rows",
        "paper": paper,
    }


# The authors' per-function learning rates and init phases are in specs/kan_<function>.yaml.
KAN_FUNCTIONS = [
    "ellipeinc", "ellipj", "ellipkinc", "iv", "jv", "kv", "lpmv0", "lpmv1", "lpmv2",
    "sph_harm01", "sph_harm02", "sph_harm11", "sph_harm12", "sph_harm22", "yv",
]  # fmt: skip
KAN_PAPER = {"kv": {"uhn": 0.0104, "direct": 0.0211}}


def _kan_row(function: str) -> dict[str, Any]:
    same = {"set": [], "changes": "none: the paper's own settings (4,000 full-batch epochs, large generator)", "seeds": PAPER_SEEDS[:1]}
    return {
        "name": f"kan_{function}",
        "dataset": function,
        "model": "KAN-g5",
        "metric": "rmse",
        "spec": f"specs/kan_{function}.yaml",
        # docs/results.md: 363-478 s UHN and 20-40 s direct on the CPU; the sweep adds 3 direct runs.
        "budgets": {"cpu": {**same, "estimate_seconds": 550}, "paper": {**same, "seeds": PAPER_SEEDS, "estimate_seconds": 550}},
        "paper": KAN_PAPER.get(function, {}),
        "direct_lr_grid": KAN_GRID,
    }


def _cifar_row(depth: int, paper: dict[str, float | None], cpu_set: list[str], changes: str, cpu_seconds: float) -> dict[str, Any]:
    return {
        "name": f"cifar10_cnn{depth}",
        "dataset": "cifar10",
        "model": f"CNN-{depth}",
        "metric": "accuracy",
        "spec": f"specs/cifar10_cnn{depth}.yaml",
        "budgets": _budgets(cpu_set, changes, cpu_seconds, None, graph=False),
        "paper": paper,
        "direct_lr_grid": CNN_GRID,
    }


TABLE1: dict[str, Any] = {
    "name": "table1",
    "title": "Table 1: one UHN per setting against direct training",
    "rows": [
        {
            "name": "mnist_mlp",
            "dataset": "mnist",
            "model": "MLP",
            "metric": "accuracy",
            "spec": "specs/mnist_mlp.yaml",
            "budgets": _budgets(
                ["train.epochs=3", "train.warmup=0"],
                "3 epochs instead of 100, no warmup (measured: 875 s UHN under load average 2-4)",
                700, None, graph=False,
            ),
            "paper": {"uhn": 0.9841, "direct": 0.9837},
            "direct_lr_grid": IMAGE_GRID,
        },
        {
            "name": "mnist_cnn8",
            "dataset": "mnist",
            "model": "CNN-8",
            "metric": "accuracy",
            "spec": "specs/mnist_cnn8.yaml",
            "budgets": _budgets(
                ["train.epochs=2", "train.warmup=0"],
                "2 epochs instead of 100, no warmup (estimate: 75k weights, about 0.6 s per step)",
                900, None, graph=False,
            ),
            "paper": {"uhn": 0.9944, "direct": 0.9938},
            "direct_lr_grid": IMAGE_GRID,
        },
        _cifar_row(
            20,
            {"uhn": 0.8993, "direct": 0.8999},
            [*SMALL_GENERATOR, "train.epochs=3", "train.warmup=0", "train.lr=1e-3"],
            "generator F_v 512, d 64; 3 epochs instead of 800, no warmup; lr 1e-3 (estimate: about 2.5 s per step)",
            2400,
        ),
        _graph_row("cora", "GCN", {"uhn": 0.7950, "direct": 0.8172}, 200, 1400),
        _graph_row("cora", "GAT", {"uhn": 0.7981, "direct": 0.8132}, 200, 1400),
        _graph_row("citeseer", "GCN", {}, 450, 1800),
        _graph_row("citeseer", "GAT", {}, 450, 3600),
        _pubmed_row("GCN", {"uhn": 0.7815, "direct": 0.7691}),
        _pubmed_row("GAT", {}),
        {
            "name": "agnews_transformer2l",
            "dataset": "ag_news",
            "model": "Transformer-2L",
            "metric": "accuracy",
            "spec": "specs/agnews_transformer2l.yaml",
            "budgets": _budgets(
                [*SMALL_GENERATOR, "train.epochs=20", "train.warmup=1", "train.lr=2e-4"],
                "generator F_v 512, d 64; 20 epochs instead of 50 on the 6,080-row stand-in split; lr 2e-4 (estimate)",
                1800, None, graph=False,
            ),
            "paper": {"uhn": 0.9099, "direct": 0.9186},
            "direct_lr_grid": TEXT_GRID,
        },
        {
            "name": "imdb_transformer1l",
            "dataset": "imdb",
            "model": "Transformer-1L",
            "metric": "accuracy",
            "spec": "specs/imdb_transformer1l.yaml",
            "budgets": _budgets(
                [*SMALL_GENERATOR, "task.max_length=256", "train.epochs=3", "train.warmup=0", "train.lr=3e-4"],
                "generator F_v 512, d 64; reviews cut to 256 tokens; 3 epochs instead of 100, no warmup; lr 3e-4 (estimate)",
                2400, None, graph=False,
            ),
            "paper": {"uhn": 0.8638, "direct": 0.8853},
            "direct_lr_grid": TEXT_GRID,
        },
        *(_kan_row(function) for function in KAN_FUNCTIONS),
    ],
}

# Table 2: one budget for all four depths, so that only the depth changes along the table.
TABLE2_CPU_SET = [*SMALL_GENERATOR, "train.epochs=1", "train.warmup=0", "train.lr=1e-3", "train.target_segments=4"]
TABLE2_CHANGES = "generator F_v 512, d 64; 1 epoch instead of 800; lr 1e-3; target_segments 4 (estimate: CNN-56 about 7 s per step)"
TABLE2: dict[str, Any] = {
    "name": "table2",
    "title": "Table 2: one fixed-size UHN generating deeper CNNs on CIFAR-10",
    "rows": [
        _cifar_row(20, {"uhn": 0.8993, "direct": 0.8999}, TABLE2_CPU_SET, TABLE2_CHANGES, 700),
        _cifar_row(32, {}, TABLE2_CPU_SET, TABLE2_CHANGES, 1000),
        _cifar_row(44, {}, TABLE2_CPU_SET, TABLE2_CHANGES, 1400),
        _cifar_row(56, {"uhn": 0.9069, "direct": 0.9043}, TABLE2_CPU_SET, TABLE2_CHANGES, 1800),
    ],
}

# The embedded default (README): proves the pipeline in about a minute, no data root needed.
DEMO: dict[str, Any] = {
    "name": "demo",
    "title": "Demo: the MLP on scikit-learn's 8x8 digits (not a paper setting)",
    "rows": [
        {
            "name": "digits_mlp",
            "dataset": "digits",
            "model": "MLP",
            "metric": "accuracy",
            "spec": "specs/digits_mlp.yaml",
            "budgets": {
                budget: {"set": [], "changes": "none: the spec as shipped", "seeds": PAPER_SEEDS, "estimate_seconds": 40}
                for budget in ("cpu", "paper")
            },
            "paper": {},
            # The digits loader has no validation split: the spec's direct_lr (1e-2) is the rule.
            "direct_lr_grid": [],
            "direct_lr_rule": "the spec's train.direct_lr 1e-2 (digits has no validation split to choose on)",
        }
    ],
}

BUILTIN_TABLES: dict[str, dict[str, Any]] = {"table1": TABLE1, "table2": TABLE2, "demo": DEMO}
