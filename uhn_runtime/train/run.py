"""Starting and resuming a run: the run folder, the checks that come before any work, one
``Trainer`` per weight source the mode asks for (``--mode uhn|direct|both``), and
summary.json from their results. The mode's own behaviour is its sampler's (``samplers/``).

A checkpoint records how long metrics.jsonl was when it was written; a resumed run cuts the
file back to the latest checkpoint's length, so no record appears twice.
"""

from __future__ import annotations

import io
import os
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from uhn_spec.errors import UHNError
from uhn_spec.plan import Plan

from ..data import TaskData, load_task_data
from ..device import resolve_device
from ..model.batch_norm import batch_norm_layers
from ..model.generator import count_generator_params
from ..model.target import DeviceTarget, TargetCache
from ..model.weights import WeightSource
from .checkpoint import load_checkpoint
from .distributed import DistContext, distributed_session
from .options import MODE_PHASES, Mode, PhaseResult, TrainOptions
from .precision import Precision
from .progress import Progress
from .reporter import TIMING_FIELDS
from .run_dir import RunDir, claimed_run_folder
from .run_tables import is_multi_model, seen_positions
from .samplers import Sampler, sampler_class, step_settings
from .stop_signals import RunStopped, StopSignals
from .tensorboard_log import require_tensorboard
from .trainer import Trainer

__all__ = ["TIMING_FIELDS", "TrainOptions", "plan_label", "resume_run", "start_run"]


def start_run(plan: Plan, out: Path, options: TrainOptions, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """Create the run folder ``out`` and train. ``source`` (what was compiled, overrides)
    is recorded in run.json."""
    check_trainable(plan, options.mode)
    # Every member's data before the run folder exists: a missing one is a one-line error.
    member_data = load_member_data(plan, options.data_root) if plan.mode == "multitask" else None
    # Resolved once, here: a resume, export or evaluation elsewhere keeps it (RunDir.precision).
    asked = plan.trained_target.spec.train.precision
    precision = Precision.resolve(asked, resolve_device(options.device), plan.task_types)
    info = {
        "mode": options.mode,
        "device": options.device,
        "precision": precision.name,
        "precision_reason": precision.reason,
        "data_root": options.data_root,
        "tensorboard": options.tensorboard,
        "shard_generation": options.shard_generation,
        "micro_shards": options.micro_shards,
        "exact": options.micro_shards > 0,  # exact data parallel chosen (--exact, --micro-shards N)
        **(source or {}),
    }
    if plan.mode == "multitask":
        info["task_sampling"] = plan.task_sampling
        info.update(step_settings(plan))
    with distributed_session(resolve_device(options.device).type) as dist, ExitStack() as held:
        check_tasks_per_step(plan, dist.world_size)
        out = dist.broadcast(out)  # rank 0's: a default folder name holds the time
        # Rank 0 claims (locks) and creates the folder, holding it to the end; a refusal (it
        # holds a run or other files already, another uhn trains in it) stops every rank.
        dist.on_main(lambda: held.enter_context(claimed_run_folder(out, new=True)))
        dist.on_main(lambda: RunDir.create(out, plan, info, world_size=dist.world_size))
        return train_run(RunDir.open(out, writes=dist.is_main), plan, options, dist, member_data)


def resume_run(out: Path, options: TrainOptions) -> dict[str, Any]:
    """Continue a run folder with its recorded mode; ``options`` may change device and data root."""
    info = RunDir.open(out).info()
    options = replace(
        options,
        mode=info["mode"],
        device=options.device if options.device != "auto" else info.get("device", "auto"),
        data_root=options.data_root or info.get("data_root"),
        tensorboard=options.tensorboard or bool(info.get("tensorboard")),
        shard_generation=options.shard_generation or bool(info.get("shard_generation")),
        # A run keeps its arithmetic, whatever today's default: the micro-shards it recorded
        # (folders from before the exact path used DDP's: 0; those from when it was the
        # default recorded 8 without "exact", and keep it).
        micro_shards=int(info.get("micro_shards", 0)),
    )
    # Every rank reads the run folder (multi-node: a shared file system); rank 0 alone writes.
    # Another world size than the run started with works: the checkpoint holds no per-rank
    # state and the global batch stays the spec's (docs/distributed.md).
    with distributed_session(resolve_device(options.device).type) as dist, ExitStack() as held:
        dist.on_main(lambda: held.enter_context(claimed_run_folder(out, new=False)))  # as start_run
        run = RunDir.open(out, writes=dist.is_main)
        plan = run.plan()
        check_tasks_per_step(plan, dist.world_size)
        if dist.is_main:
            cut_metrics_to_last_checkpoint(run)
        return train_run(run, plan, options, dist)


def check_tasks_per_step(plan: Plan, world_size: int) -> None:
    """Several tasks a step is a single-process setting: under torchrun each rank already
    draws its own task, so N ranks train N tasks a step, and PCGrad would need every
    rank's per-task gradients, which DDP's one all-reduce of the summed gradient does not give."""
    train = plan.targets[0].spec.train
    if plan.mode == "multitask" and train.tasks_per_step > 1 and world_size > 1:
        surgery = f" with gradient_surgery {train.gradient_surgery}" if train.gradient_surgery != "none" else ""
        raise UHNError(
            f"train.tasks_per_step: {train.tasks_per_step}{surgery} runs in one process, not under torchrun "
            f"(world size {world_size}: each rank already draws its own task a step); set tasks_per_step 1 or run "
            "without torchrun"
        )


def exact_micro_shards(plan: Plan, options: TrainOptions, sharded: bool, target: DeviceTarget) -> int:
    """Micro-shards per batch of the exact data-parallel path, or 0 where the fast step
    stays: not chosen (``options.micro_shards`` 0, the default), several targets (each rank
    trains its own), sharded generation (each rank's generator backward covers its own
    share) and a target with BatchNorm (its statistics would be a micro-shard's, not the
    batch's)."""
    if options.micro_shards <= 0 or sharded or is_multi_model(plan) or plan.mode == "multitask":
        return 0
    return 0 if batch_norm_layers(target.model) else options.micro_shards


def check_trainable(plan: Plan, mode: Mode) -> None:
    """One UHN trains a plan's targets together when its mode allows them (the sampler's
    check), and at least one is seen; one generated target's level change bound."""
    if not seen_positions(plan):
        raise UHNError("the plan has no seen target to train; hold out fewer models (family `unseen`)")
    sampler_class(plan).check(plan, mode)
    if plan.targets[0].spec.train.level_change_bound and is_multi_model(plan):
        raise UHNError(
            "train.level_change_bound: bounds one target's generated weights; a family or multi-task "
            "run generates several (remove it)"
        )


def plan_label(plan: Plan) -> str:
    """What a run trains, in a word: a target's name, a family's, or a multi-task run's members."""
    return sampler_class(plan).plan_label(plan)


def load_member_data(plan: Plan, data_root: str | None) -> dict[str, TaskData]:
    """Every multi-task member's data, before any training: a member whose task cannot be
    loaded stops the run with one line naming it."""
    loaded: dict[str, TaskData] = {}
    for target in plan.targets:
        try:
            loaded[target.name] = load_task_data(target.spec.task, data_root)
        except UHNError as err:
            raise UHNError(f"task {target.name} ({target.spec.task.dataset}): {err}") from None
    return loaded


def cut_metrics_to_last_checkpoint(run: RunDir) -> None:
    """Drop the records a killed run logged after its latest checkpoint: the resumed run logs
    them again. The latest checkpoint is the one that saw the longest metrics.jsonl (every
    earlier one saw a prefix of it); with no checkpoint at all the run starts over."""
    sizes: list[int] = []
    for kind in MODE_PHASES["both"]:
        path = run.checkpoint_path(kind)
        if path.is_file():
            size = load_checkpoint(path).get("metrics_bytes")
            if size is None:
                return  # written by a uhn that did not record it: keep everything
            sizes.append(int(size))
    run.truncate_metrics(max(sizes, default=0))


def train_run(
    run: RunDir,
    plan: Plan,
    options: TrainOptions,
    dist: DistContext = DistContext(),
    member_data: dict[str, TaskData] | None = None,
) -> dict[str, Any]:
    """Train ``plan`` in ``run``, one phase per weight source of the mode, and write
    summary.json; a multi-task run's ``member_data`` may come already loaded."""
    check_trainable(plan, options.mode)
    target = plan.targets[seen_positions(plan)[0]]  # task and train of every target
    device = resolve_device(options.device)
    precision = run.precision(target.spec.train.precision, device)
    if plan.mode == "multitask" and member_data is None:
        member_data = load_member_data(plan, options.data_root)
    data = member_data[target.name] if member_data else load_task_data(target.spec.task, options.data_root)
    if options.tensorboard or target.spec.train.tensorboard:
        require_tensorboard()  # before any work, not after the init phase
    progress = Progress(options.progress if dist.is_main else io.StringIO())  # rank 0 reports
    trainable, _ = count_generator_params(plan.generator)
    modes = sampler_class(plan)
    progress.line(
        f"{modes.plan_label(plan)}: {modes.plan_description(plan)}, generator {trainable:,} params; "
        f"{device.type} {precision.name}; run folder {run.root}"
    )
    progress.line(f"precision: {precision.name} ({precision.reason})")
    notes = (
        [f"{name}: {note}" for name, d in member_data.items() for note in d.notes] if member_data else list(data.notes)
    )
    for note in notes:  # e.g. a stand-in dataset or split: part of what the numbers mean
        progress.line(f"data: {note}")
    results: dict[str, PhaseResult] = {}
    samplers: list[Sampler] = []

    def on_signal(name: str) -> None:
        progress.line(f"{name}: stopping after this step and saving a checkpoint (again to abandon it)")

    try:
        with StopSignals(on_signal) as stop:
            for kind in MODE_PHASES[options.mode]:
                if stop.requested:  # arrived during the last phase's final evaluation
                    raise RunStopped(f"{stop.requested.name}: stopped before the {kind} phase", stop.requested)
                sampler = new_sampler(plan, member_data or data, device, dist)
                samplers.append(sampler)
                trainer = new_trainer(kind, run, sampler, precision, options, progress, stop, dist)
                results[kind] = trainer.run_to_end()
        uhn = results.get("uhn")
        models = uhn.models if uhn else None
        fields = samplers[0].summary(models, (uhn.record or {}) if uhn else {}, progress, run)
    finally:
        progress.close()
    summary = {
        "spec": modes.plan_label(plan),
        "dataset": target.spec.task.dataset,
        "metric": data.metric,
        "uhn": uhn.value if uhn else None,
        "direct": results["direct"].value if "direct" in results else None,
        "generator_params": trainable,
        "target_params": None,
        "depth": plan.recursion_depth,
        "seconds": round(sum(r.seconds for r in results.values()), 3),
        "phase_seconds": {k: round(r.seconds, 3) for k, r in results.items()},
        "train_step": {k: r.step for k, r in results.items()},  # each phase's step: plain, ddp, exact, pcgrad
        "device": device.type,
        "precision": precision.name,
        "precision_reason": precision.reason,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "seed": target.spec.train.seed,
        "data_notes": notes,
    }
    summary.update(fields)
    run.write_summary(summary)
    return summary


def new_sampler(plan: Plan, data: TaskData | dict[str, TaskData], device: torch.device, dist: DistContext) -> Sampler:
    """The mode's sampler over a fresh target cache (targets are built on first use)."""
    return sampler_class(plan)(plan, data, TargetCache(plan, device), dist)  # type: ignore[arg-type]  # multitask: by name


def new_trainer(
    kind: Any,
    run: RunDir,
    sampler: Sampler,
    precision: Precision,
    options: TrainOptions,
    progress: Progress,
    stop: StopSignals,
    dist: DistContext,
    source: WeightSource | None = None,
) -> Trainer:
    """One phase's trainer, its exact micro-shards decided from the plan and its first target;
    ``source``: a weight source of the caller's (``uhn bench``'s naive generator), else the kind's."""
    first = sampler.targets[sampler.seen[0]]
    sharded = kind == "uhn" and options.shard_generation and dist.active
    micro_shards = exact_micro_shards(sampler.plan, options, sharded, first)
    return Trainer(kind, run, sampler, precision, options, progress, stop, micro_shards, dist, source)
