"""Distributed training (torchrun, gloo on the CPU): 2 processes (1 thread each) take the steps
of 1 process on 2 threads (exact data parallel; DDP's average to float rounding), sharded
generation gives the weights and gradients of unsharded generation, a 2-process run resumes
exactly, and the torchrun command line writes the run folder a 1-process run does.

The 2-process runs happen once per module (``two_process_runs``: one spawn, tiny specs, a
few steps each) and the tests compare what they wrote with 1-process runs made here.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.conftest import KillAfter, RunInterrupted
from tests.tiny_specs import tiny_plan, tiny_spec_data, tiny_spec_yaml
from uhn_runtime.data import Batch
from uhn_runtime.model.generation_shard import GenerationShard, ShardingError, unit_cuts
from uhn_runtime.model.generator import UHNGenerator
from uhn_runtime.model.target import DeviceTarget
from uhn_runtime.train.checkpoint import load_checkpoint
from uhn_runtime.train.distributed import (
    DEFAULT_MICRO_SHARDS,
    DistContext,
    DistributedError,
    LostContact,
    contact_failure,
    environment_context,
    is_lost_contact,
    lost_contact_reported,
    micro_shard,
    ordered_sum,
    owned_micro_shards,
    shard_batch,
    share_bounds,
)
from uhn_runtime.train.run import TIMING_FIELDS, TrainOptions, exact_micro_shards, resume_run, start_run
from uhn_runtime.train.run_dir import RunDir
from uhn_spec import ExperimentSpec, compile_spec

WORLD = 2
# The one-process runs compared with the 2-process ones use this many threads (an idle 2-core
# machine's default), each rank of a 2-process run one (torchrun's default).
ONE_PROCESS_THREADS = 2
TASKS = ("image_classification", "graph_node_classification", "text_classification")
# The exact path's runs: every task in fp32, and under bf16 autocast (what ``auto`` picks on a
# CPU with bf16 instructions), where DDP's average ends 0.2-3 % away from one process.
EXACT_RUNS = {**{task: (task, "fp32") for task in TASKS}, "image_bf16": ("image_classification", "bf16")}
# 1-process vs 2-process weights: the bound (the exact path gives the same bits here).
RELATIVE = 1e-5


def fp32_plan(task_type: str = "image_classification", **train):  # type: ignore[no-untyped-def]
    """A tiny plan pinned to fp32: DDP's average and sharded generation sum in another order
    than one process, which fp32 keeps within RELATIVE over a few steps and bf16 does not."""
    return tiny_plan(task_type, precision="fp32", **train)


def exact_plan(run: str):  # type: ignore[no-untyped-def]
    task, precision = EXACT_RUNS[run]
    return tiny_plan(task, precision=precision, epochs=2)


@contextlib.contextmanager
def intra_op_threads(count: int):  # type: ignore[no-untyped-def]
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def options(mode: str = "both", **kw) -> TrainOptions:
    return TrainOptions(mode=mode, device="cpu", progress=io.StringIO(), checkpoint_seconds=0.0, **kw)  # type: ignore[arg-type]


def exact(mode: str = "both", **kw) -> TrainOptions:
    """Exact data parallel, asked for (`uhn train --exact`): the default is DDP's average."""
    return options(mode, micro_shards=DEFAULT_MICRO_SHARDS, **kw)


def with_dropout(plan):  # type: ignore[no-untyped-def]
    layers = [layer.model_copy(update={"dropout": 0.2}) for layer in plan.targets[0].spec.layers]
    return compile_spec(plan.targets[0].spec.model_copy(update={"layers": layers}))


def resume_plan():  # type: ignore[no-untyped-def]
    return with_dropout(tiny_plan(steps=8, eval_every=3))


def final_weights(run_root: Path, kind: str = "uhn") -> dict[str, torch.Tensor]:
    state = load_checkpoint(run_root / "checkpoints" / f"{kind}.pt")
    assert state["finished"]
    return state["source"]


def assert_close_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    """Every tensor within RELATIVE of its largest value."""
    assert got.keys() == want.keys()
    for name in want:
        scale = want[name].abs().max().clamp_min(1e-12)
        difference = float((got[name] - want[name]).abs().max() / scale)
        assert difference <= RELATIVE, (name, difference)


def records(run_root: Path) -> list[dict]:
    return [json.loads(line) for line in (run_root / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- the 2-process runs


def sharded_generation(rank: int, root: Path) -> None:
    """Weights and gradients of a sharded generator, each rank with its own loss; saved."""
    plan = tiny_plan()
    target = plan.targets[0]
    torch.manual_seed(5)  # the Linear layers' init draws from the global RNG
    generator = UHNGenerator(plan.generator, plan.index_ranges, plan.structure_ranges, seed=5)
    generator.shard = GenerationShard.for_context(environment_context())
    index, structure = target.index, target.structure_rows()
    weights = torch.linspace(-1.0, 1.0, target.num_params) * (rank + 1)
    results = {}
    for saved in (2**30, 0):  # the unit outputs kept for the backward, or recomputed
        generator.max_saved_bytes = saved
        flat = generator(index, structure, 64)  # small units: several per rank
        (flat * weights).sum().backward()
        grads = {}
        for name, p in generator.named_parameters():
            dist.all_reduce(p.grad)
            grads[name] = p.grad / WORLD  # as DDP averages them
            p.grad = None
        results[saved] = {"flat": flat.detach(), "grads": grads}
    torch.save(results, root / f"sharded_rank{rank}.pt")


def worker(rank: int, port: int, root: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    out = Path(root)
    try:
        for run in EXACT_RUNS:
            start_run(exact_plan(run), out / f"exact_{run}", exact())
        start_run(fp32_plan(epochs=2), out / "ddp_run", options())  # the default
        start_run(fp32_plan(epochs=2), out / "sharded_run", options("uhn", shard_generation=True))
        plan = resume_plan()
        start_run(plan, out / "whole", exact())
        try:
            start_run(plan, out / "killed", exact(observers=(KillAfter(5),)))
        except RunInterrupted:
            pass
        resume_run(out / "killed", options())  # keeps the run's micro-shards (run.json)
        sharded_generation(rank, out)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("two_process")
    mp.spawn(worker, args=(free_port(), str(root)), nprocs=WORLD, join=True)
    return root


# --------------------------------------------------------------------------- tests


def logged_losses(run_root: Path) -> list[float]:
    return [r["loss"] for r in records(run_root) if r["event"] in ("train", "init")]


@pytest.mark.parametrize("run", EXACT_RUNS)
def test_two_processes_take_the_steps_of_one_on_another_thread_count(
    two_process_runs: Path, tmp_path: Path, run: str
) -> None:
    """Exact data parallel (--exact): 2 processes of 1 thread end where 1 process of 2
    threads ends, every weight (the attention key bias, whose gradient is rounding noise,
    included) and every logged loss."""
    with intra_op_threads(ONE_PROCESS_THREADS):
        start_run(exact_plan(run), tmp_path / "one", exact())
    two = two_process_runs / f"exact_{run}"
    for kind in ("uhn", "direct"):
        assert_close_weights(final_weights(two, kind), final_weights(tmp_path / "one", kind))
    # The logged loss is the global batch's, as one process logs it.
    assert logged_losses(two) == pytest.approx(logged_losses(tmp_path / "one"), rel=RELATIVE)
    assert json.loads((two / "run.json").read_text())["world_size"] == WORLD
    assert json.loads((tmp_path / "one" / "run.json").read_text())["world_size"] == 1


def test_ddp_average_reaches_the_weights_of_one_process_to_rounding(two_process_runs: Path, tmp_path: Path) -> None:
    """The default, ``micro_shards=0`` (and the paths exact data parallel leaves to DDP): the
    same steps, sums in another order; fp32 over a few steps stays within RELATIVE."""
    plan = fp32_plan(epochs=2)
    start_run(plan, tmp_path / "one", options())
    summary = json.loads((two_process_runs / "ddp_run" / "summary.json").read_text())
    assert summary["train_step"] == {"uhn": "ddp", "direct": "ddp"}
    for kind in ("uhn", "direct"):
        assert_close_weights(final_weights(two_process_runs / "ddp_run", kind), final_weights(tmp_path / "one", kind))
    assert logged_losses(two_process_runs / "ddp_run") == pytest.approx(logged_losses(tmp_path / "one"), rel=RELATIVE)


def test_dropout_draws_follow_the_micro_shards_not_the_ranks(two_process_runs: Path, tmp_path: Path) -> None:
    """On the exact path each micro-shard draws its dropout masks from (seed, step, micro-shard),
    so a run with dropout on 2 processes is the one-process run."""
    with intra_op_threads(ONE_PROCESS_THREADS):
        start_run(resume_plan(), tmp_path / "one", exact())
    for kind in ("uhn", "direct"):
        assert_close_weights(final_weights(two_process_runs / "whole", kind), final_weights(tmp_path / "one", kind))


def test_sharded_generation_gives_the_weights_and_gradients_of_unsharded(two_process_runs: Path) -> None:
    plan = tiny_plan()
    target = plan.targets[0]
    torch.manual_seed(5)  # the Linear layers' init draws from the global RNG
    generator = UHNGenerator(plan.generator, plan.index_ranges, plan.structure_ranges, seed=5)
    # At the ranks' one thread: this compares sharded with unsharded generation, not thread
    # counts (the generator's forward at 2 threads differed from the ranks' in one CI run).
    with intra_op_threads(1):
        flat = generator(target.index, target.structure_rows(), 64)
        # The ranks' losses are sum(flat * w * (rank + 1)); DDP averages over the 2 ranks.
        weights = torch.linspace(-1.0, 1.0, target.num_params) * (1 + 2) / WORLD
        (flat * weights).sum().backward()
    for rank in range(WORLD):
        for saved, result in torch.load(two_process_runs / f"sharded_rank{rank}.pt").items():
            assert torch.equal(result["flat"], flat.detach()), (rank, saved)
            for name, p in generator.named_parameters():
                # Sums over the units run in another order (per rank, then all-reduced): equal
                # to rounding, which near-zero elements feel relative to the tensor's scale.
                scale = float(p.grad.abs().max())
                torch.testing.assert_close(
                    result["grads"][name], p.grad, rtol=1e-5, atol=1e-6 * scale + 1e-9, msg=f"{rank} {saved} {name}"
                )


def test_sharded_training_reaches_the_weights_of_one_process(two_process_runs: Path, tmp_path: Path) -> None:
    start_run(fp32_plan(epochs=2), tmp_path / "one", options("uhn"))
    assert_close_weights(final_weights(two_process_runs / "sharded_run"), final_weights(tmp_path / "one"))
    assert json.loads((two_process_runs / "sharded_run" / "run.json").read_text())["shard_generation"] is True


def test_a_resumed_two_process_run_ends_exactly_as_an_uninterrupted_one(two_process_runs: Path) -> None:
    whole, killed = two_process_runs / "whole", two_process_runs / "killed"
    for kind in ("uhn", "direct"):
        a, b = final_weights(whole, kind), final_weights(killed, kind)
        assert all(torch.equal(a[name], b[name]) for name in a), kind
    without_resume = [
        {k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records(killed) if r["event"] != "resume"
    ]
    assert without_resume == [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records(whole)]
    assert any(r["event"] == "resume" and r["world_size"] == WORLD for r in records(killed))


def test_torchrun_writes_the_run_folder_of_one_process(tmp_path: Path) -> None:
    """The documented command, as a user runs it (the spec's precision: auto): torchrun starts
    `uhn train` twice, one thread each; the one-process run takes 2 threads; the exports agree."""
    uhn = shutil.which("uhn")
    torchrun = shutil.which("torchrun")
    if uhn is None or torchrun is None:
        pytest.skip("uhn or torchrun is not on PATH (install the package)")
    spec = tmp_path / "tiny.yaml"
    spec.write_text(tiny_spec_yaml(epochs=2))
    user_env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_CBWR", "OMP_WAIT_POLICY")}
    runs = (
        ("one", [], {**user_env, "OMP_NUM_THREADS": str(ONE_PROCESS_THREADS)}),
        ("two", [torchrun, "--standalone", "--nproc-per-node", "2"], user_env),
    )
    for name, launcher, env in runs:
        out = str(tmp_path / name)
        command = [*launcher, uhn, "train", str(spec), "-o", out, "--device", "cpu", "--mode", "uhn", "--exact"]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
        if name == "two":
            assert done.stdout.count("test accuracy:") == 1  # rank 0 alone prints
        export = subprocess.run(
            [uhn, "export", str(tmp_path / name), "-o", str(tmp_path / f"{name}.safetensors")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert export.returncode == 0, export.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    from safetensors.torch import load_file

    assert_close_weights(load_file(tmp_path / "two.safetensors"), load_file(tmp_path / "one.safetensors"))
    for name, world in (("one", 1), ("two", 2)):
        info = json.loads((tmp_path / name / "run.json").read_text())
        assert (info["world_size"], info["micro_shards"], info["exact"]) == (world, 8, True)


# --------------------------------------------------------------------------- pieces


def test_batch_shares_are_contiguous_and_cover_the_batch() -> None:
    batch = Batch(torch.arange(10).view(5, 2), torch.arange(5), padding_mask=torch.zeros(5, 2, dtype=torch.bool))
    shares = [shard_batch(batch, rank, 2) for rank in range(2)]
    assert [s.targets.tolist() for s, _ in shares] == [[0, 1], [2, 3, 4]]
    assert [w for _, w in shares] == [0.4, 0.6]
    assert [share_bounds(1, rank, 2) for rank in range(2)] == [(0, 0), (0, 1)]


def test_micro_shards_cover_the_batch_and_ranks_own_contiguous_runs_of_them() -> None:
    owned = [list(owned_micro_shards(8, rank, 3)) for rank in range(3)]
    assert owned == [[0, 1], [2, 3, 4], [5, 6, 7]]
    assert [list(owned_micro_shards(2, rank, 3)) for rank in range(3)] == [[], [0], [1]]
    batch = Batch(torch.arange(10).view(5, 2), torch.arange(5))
    parts = [micro_shard(batch, i, 4) for i in range(4)]
    assert [p.targets.tolist() for p, _ in parts] == [[0], [1], [2], [3, 4]]
    assert sum(share for _, share in parts) == pytest.approx(1.0)
    assert micro_shard(batch, 0, 1)[0] is batch
    vectors = [torch.tensor([1e8, 1.0]), torch.tensor([-1e8, 1.0]), torch.tensor([1.0, 1.0])]
    assert ordered_sum(vectors).tolist() == [1.0, 3.0]  # left to right: (1e8 - 1e8) + 1


def test_exact_path_leaves_batch_norm_and_sharded_generation_to_ddp() -> None:
    plan = tiny_plan()
    target = DeviceTarget(plan.targets[0])
    chosen = TrainOptions(micro_shards=DEFAULT_MICRO_SHARDS)  # --exact
    assert exact_micro_shards(plan, chosen, False, target) == 8
    assert exact_micro_shards(plan, TrainOptions(micro_shards=3), False, target) == 3
    assert exact_micro_shards(plan, TrainOptions(), False, target) == 0  # the default: the fast step
    assert exact_micro_shards(plan, chosen, True, target) == 0  # sharded generation
    data = tiny_spec_data()
    data["layers"] = [data["layers"][0], {"kind": "norm", "type": "batch", "features": 12}, data["layers"][1]]
    with_batch_norm = compile_spec(ExperimentSpec.model_validate(data))
    assert exact_micro_shards(with_batch_norm, chosen, False, DeviceTarget(with_batch_norm.targets[0])) == 0


def test_graph_shares_split_the_counted_nodes_and_keep_the_graph() -> None:
    mask = torch.tensor([True, False, True, True, False, True])
    batch = Batch(
        torch.zeros(6, 3),
        torch.zeros(6, dtype=torch.long),
        edge_index=torch.zeros(2, 4, dtype=torch.long),
        node_mask=mask,
    )
    shares = [shard_batch(batch, rank, 2) for rank in range(2)]
    assert [s.node_mask.nonzero().squeeze(1).tolist() for s, _ in shares] == [[0, 2], [3, 5]]
    assert all(s.inputs.shape == (6, 3) for s, _ in shares)
    assert [w for _, w in shares] == [0.5, 0.5]


def test_unit_cuts_balance_rows_and_give_every_rank_a_unit() -> None:
    assert unit_cuts([10, 10, 10, 10], 2) == [0, 2, 4]
    assert unit_cuts([100, 1, 1, 1], 2) == [0, 1, 4]
    assert unit_cuts([1, 1, 100], 3) == [0, 1, 2, 3]
    with pytest.raises(ShardingError, match="at least 3 work units"):
        unit_cuts([5, 5], 3)


def test_torchrun_environment_is_read_and_checked() -> None:
    assert not environment_context({}).active
    context = environment_context({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (context.rank, context.world_size, context.is_main) == (1, 2, False)
    with pytest.raises(DistributedError, match="LOCAL_RANK: not set"):
        environment_context({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(DistributedError, match="not a valid rank"):
        environment_context({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})


@pytest.mark.slow  # two `uhn train` processes: about 12 s on an idle 2-core machine, 50 s loaded
def test_killing_rank_0_mid_run_leaves_rank_1_one_line_and_the_resume_code(tmp_path: Path) -> None:
    """Two `uhn train` processes, started as torchrun starts them (its variables and a
    rendezvous address, without torchrun's agent, which would stop rank 1 itself); rank 0
    is SIGKILLed once training runs: rank 1 says in one line that it lost contact and how to
    resume, without gloo's traceback, and exits with EXIT_LOST_CONTACT."""
    from uhn_cli.train_commands import EXIT_LOST_CONTACT

    spec = tmp_path / "tiny.yaml"
    spec.write_text(tiny_spec_yaml(steps=1_000_000, init_steps=0))  # runs until killed
    run = tmp_path / "run"
    rendezvous = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": str(WORLD),
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "uhn_cli", "train", str(spec), "-o", str(run), "--device", "cpu", "--mode", "uhn"]
    ranks = [
        subprocess.Popen(
            command,
            env={**os.environ, **rendezvous, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(WORLD)
    ]
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.jsonl").is_file() or '"event": "train"' not in (run / "metrics.jsonl").read_text():
            assert time.monotonic() < deadline and ranks[0].poll() is None, ranks[0].communicate()[1][-3000:]
            time.sleep(0.2)
        ranks[0].kill()
        _, stderr = ranks[1].communicate(timeout=120)
    finally:
        for process in ranks:
            process.kill()
            process.communicate()
    assert ranks[1].returncode == EXIT_LOST_CONTACT, stderr[-3000:]
    assert "Traceback" not in stderr and "╭" not in stderr, stderr[-3000:]
    (line,) = [line for line in stderr.splitlines() if "lost contact" in line]
    assert line.startswith("rank 1: lost contact with another process (") and line.endswith(
        f"uhn train --resume {run}`"
    )


def test_only_a_failure_to_reach_another_process_is_lost_contact() -> None:
    gloo = RuntimeError(
        "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:30644: Connection reset by "
        "peer. This is typically caused by a remote worker hanging or bugs in the application."
    )
    assert is_lost_contact(gloo)
    assert contact_failure(gloo) == "Read error [127.0.0.1]:30644: Connection reset by peer"
    with pytest.raises(LostContact, match=r"^rank 1: lost contact with another process \(Read error"):
        with lost_contact_reported(DistContext(rank=1, world_size=2)):
            raise gloo
    bug = RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x2)")  # a bug keeps its traceback
    assert not is_lost_contact(bug)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        with lost_contact_reported(DistContext(rank=1, world_size=2)):
            raise bug


def test_a_follower_run_folder_writes_nothing(tmp_path: Path) -> None:
    plan = tiny_plan()
    RunDir.create(tmp_path / "run", plan, {"mode": "uhn"}, world_size=3)
    follower = RunDir.open(tmp_path / "run", writes=False)
    follower.log({"event": "train"})
    follower.write_summary({"uhn": 1.0})
    assert not follower.metrics_path.exists() and follower.summary() is None
    assert follower.info()["world_size"] == 3


if sys.platform == "win32":  # gloo's TCP transport on Windows needs libuv builds
    pytestmark = pytest.mark.skip("distributed tests run on Linux and macOS")
