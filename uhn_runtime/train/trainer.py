"""The training loop of one weight source (a UHN or the direct weights): init phase, then
task phase, from a fresh start or its last checkpoint. Which targets and batches a step
trains is the sampler's business, how its gradient is formed the step strategy's
(``steps.py``); this loop never branches on the mode.

Resumable by construction: the data order is a function of (seed, epoch), the schedule of the
unit counter, and a checkpoint at a log interval's end holds the rest, so a resumed run ends
with exactly the weights of an uninterrupted one. Checkpoints come at most once per
``options.checkpoint_seconds`` (and at evaluations and the end); Ctrl-C or SIGTERM saves
after the current step and stops.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from ..data import Batch
from ..model.target import DeviceTarget
from ..model.weights import RecursiveSource, SourceKind, UHNSource, WeightSource
from .checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from .distributed import DistContext
from .evaluate import evaluate_source
from .init_phase import run_init_phase
from .options import PhaseResult, StepEvent, TrainOptions
from .phase_source import phase_source
from .precision import Precision
from .progress import Progress
from .reporter import SHOWN_LINES, Reporter
from .run_dir import RunDir
from .samplers import Sampler, Work
from .schedule import set_lr, warmup_cosine_factor
from .stop_signals import RunStopped, StopSignals
from .tensorboard_log import TensorBoardLog
from .units import Units


class Trainer:
    def __init__(
        self,
        kind: SourceKind,
        run: RunDir,
        sampler: Sampler,
        precision: Precision,
        options: TrainOptions,
        progress: Progress,
        stop: StopSignals,
        micro_shards: int,
        dist: DistContext = DistContext(),
        source: WeightSource | None = None,
    ):
        """``source``: a weight source made elsewhere (``uhn bench``'s naive generator);
        by default ``make_source``'s for ``kind``."""
        self.kind, self.run, self.sampler, self.plan = kind, run, sampler, sampler.plan
        self.precision, self.options, self.stop, self.dist = precision, options, stop, dist
        cfg = self.cfg = sampler.cfg
        parts = phase_source(kind, sampler, precision, options, stop, micro_shards, dist, source)
        self.source, self.flat, self.lr, self.stepper = parts.source, parts.flat, parts.lr, parts.stepper
        self.strategy, self.evaluated_by_all = parts.strategy, parts.evaluated_by_all
        self.change_bound = parts.change_bound
        units = self.units = Units.of(cfg, sampler.batches_per_epoch, sampler.log_interval)
        show_every = max(1, math.ceil(units.total / units.interval / SHOWN_LINES))
        self.reporter = Reporter(run, progress, show_every, sampler.times_by_target())
        self.saved_at = time.monotonic()
        self.checkpoint_path = run.checkpoint_path(kind)
        self.last_good = "none yet (no checkpoint written)"
        self.units_done = self.steps_done = 0  # steps_done: past units_done after a Ctrl-C
        self.interval_losses: list[float] = []  # losses of the log interval under way
        self.init_done = kind != "uhn" or cfg.init_steps == 0
        self.seconds_before, self.started = 0.0, time.perf_counter()
        self.current_lr = self.lr

    def run_to_end(self) -> PhaseResult:
        resumed = self.dist.broadcast(self.checkpoint_path.exists())  # before rank 0 writes one
        if resumed:
            state = load_checkpoint(self.checkpoint_path, self.plan.source_hash, self.kind)
            self.restore(state)
            if state["finished"]:
                return self.result(float(state["result"]), state.get("models"), float(state["seconds"]))
        if (self.options.tensorboard or self.cfg.tensorboard) and self.dist.is_main:
            first_unit = self.units_done + 1 if resumed else None
            self.reporter.tensorboard = TensorBoardLog(self.run.root / "tensorboard", self.kind, first_unit)
        try:
            if not self.init_done:
                self.init_phase()
                self.init_done = True
                self.save()
            self.task_phase()
            base: dict[str, Any] = {"phase": self.kind, "event": "eval", "split": "test", "final": True}
            base[self.units.name] = self.units_done
            value, models = self.sampler.final(self.evaluate, lambda fields: self.reporter.log({**base, **fields}))
            self.save(result=value, models=models)
        finally:
            self.reporter.close()
        return self.result(value, models, self.elapsed())

    def result(self, value: float, models: dict[str, float] | None, seconds: float) -> PhaseResult:
        record = {**self.sampler.phase_record(self.units.total), **self.strategy.phase_record()}
        return PhaseResult(self.kind, value, seconds, models, record, self.strategy.name)

    def elapsed(self) -> float:
        return self.seconds_before + time.perf_counter() - self.started

    def evaluate(self, target: DeviceTarget) -> float:
        """The test metric of ``target``, under torchrun evaluated by rank 0 (by every rank when
        generation is sharded) and sent to the others."""
        label = f"{self.kind} eval test" + (f" {target.plan.name}" if self.sampler.named else "")
        value = None
        if self.dist.is_main or self.evaluated_by_all:
            with self.reporter.progress.task(label, None) as shown:
                data = self.sampler.data_for(target)
                value = evaluate_source(self.source, target, data, "test", self.precision, on_batch=shown.update)
        shared = value if self.evaluated_by_all else self.dist.broadcast(value if self.dist.is_main else None)
        assert shared is not None  # rank 0 (or every rank) evaluated
        return shared

    def init_phase(self) -> None:
        """Fit the generator's outputs to the init targets' statistics (``init_phase.py``)."""
        steps, log_every = self.cfg.init_steps, max(1, self.cfg.init_steps // 10)
        shown = self.reporter.progress.task(f"{self.kind} init", steps)

        def on_step(step: int, loss: float, lr: float) -> None:
            done = step + 1
            shown.update(done, f"stats loss {loss:.4g}")
            if done % log_every == 0 or done == steps:
                self.reporter.log({"phase": self.kind, "event": "init", "step": done, "loss": loss, "lr": lr})
            signal = self.stop.requested
            if signal and done < steps:  # nothing saved yet: the init phase restarts on resume
                raise RunStopped(f"{signal.name}: stopped in the {self.kind} init phase", signal)

        def loss_at(step: int) -> torch.Tensor:
            """The statistics loss of the step's architectures, averaged."""
            targets = [self.sampler.targets[i] for i in self.sampler.positions(step, "init")]
            losses = [t.init_targets().loss(self.flat(t)) for t in targets]
            return losses[0] if len(losses) == 1 else torch.stack(losses).mean()

        assert isinstance(self.source, UHNSource | RecursiveSource)  # only a UHN phase has an init phase
        with shown:
            final = run_init_phase(self.source, loss_at, steps, self.cfg.init_lr, self.precision, self.last_good,
                on_step, change_bound=self.change_bound, deep_levels=self.cfg.init_deep_levels)  # fmt: skip
        self.reporter.line(f"{self.kind} init: {steps} steps, stats loss {final:.4g}  ({self.elapsed():.1f} s)")

    def task_phase(self) -> None:
        total_steps = self.units.total_steps
        if self.steps_done >= total_steps:
            return  # stopped during the final evaluation: only that is left
        with self.reporter.progress.task(f"{self.kind} train", total_steps, completed=self.steps_done) as shown:
            tick = time.perf_counter()
            for step, epoch, batches in self.sampler.batches(self.steps_done):
                loss, work = self.train_step(step, epoch, batches)
                self.interval_losses.append(loss)
                self.reporter.time_step(self.sampler.label(step), time.perf_counter() - tick)
                self.steps_done = step + 1
                shown.update(self.steps_done, self.units.status(epoch, self.interval_losses))
                if self.end_of_step(work, loss):
                    break
                tick = time.perf_counter()

    def train_step(self, step: int, epoch: int, batches: list[Batch]) -> tuple[float, list[Work]]:
        """One optimiser step at the schedule's learning rate on the step's batches: what the
        loop runs and what ``uhn bench`` times. Returns the loss and what the step trained."""
        unit = self.units.counter(step, epoch)
        self.current_lr = self.lr * warmup_cosine_factor(unit, self.cfg.warmup, self.units.total)
        set_lr(self.stepper.optimizer, self.current_lr)
        work = self.sampler.work(step, batches)
        return self.strategy(step, work, self.units.where(step, epoch), self.last_good), work

    def end_of_step(self, work: list[Work], loss: float) -> bool:
        """Log, checkpoint and stop as the step just taken asks; True when the phase is done."""
        self.sampler.after_step(self.kind, self.steps_done, self.units.total, self.reporter.log, self.reporter.progress)
        at_unit_end = self.steps_done % self.units.steps_per_unit == 0
        if at_unit_end:
            self.units_done = self.steps_done // self.units.steps_per_unit
        last = at_unit_end and self.units_done == self.units.total
        if at_unit_end and (self.units_done % self.units.interval == 0 or last):
            mean_loss = sum(self.interval_losses) / len(self.interval_losses)
            self.interval_losses = []  # before end_interval's checkpoint
            self.end_interval(mean_loss, self.current_lr, last)
        names, sizes = tuple(w.target.plan.name for w in work), tuple(int(w.batch.targets.shape[0]) for w in work)
        event = StepEvent(self.kind, self.steps_done - 1, self.units_done, at_unit_end, last, names, sizes, loss)
        for observer in self.options.observers:
            observer.after_step(event)
        signal = self.stop.requested
        if signal and not last:
            self.save()
            position = self.units.position(self.steps_done, self.units_done)
            where = f"stopped the {self.kind} phase after {position}; saved {self.checkpoint_path}"
            raise RunStopped(f"{signal.name}: {where}", signal)
        return last

    def end_interval(self, mean_loss: float, lr: float, last: bool) -> None:
        record: dict[str, Any] = {"phase": self.kind, "event": "train", self.units.name: self.units_done}
        record.update(loss=mean_loss, lr=lr, seconds=round(self.elapsed(), 3), **self.reporter.step_time_fields())
        record.update(self.strategy.interval_record())
        if self.stepper.bound is not None:  # how much of the last Adam step the bound kept
            record["step_scale"] = self.stepper.bound.last_scale
        shown = f"{self.kind} {self.units.name} {self.units_done}/{self.units.total}  loss {mean_loss:.4f}"
        every = self.cfg.eval_every
        evaluated = bool(every and self.units_done % every == 0 and not last)
        if evaluated:
            shown += self.sampler.interval_evaluation(self.evaluate, record)
        self.reporter.log(record)
        if last or evaluated or time.monotonic() - self.saved_at >= self.options.checkpoint_seconds:
            self.save()
        if last or evaluated or self.reporter.shows(self.units_done // self.units.interval):
            self.reporter.line(f"{shown}  lr {lr:.3g}  ({self.elapsed():.1f} s)")

    def save(self, result: float | None = None, models: dict[str, float] | None = None) -> None:
        if self.dist.is_main:  # every rank holds the same state; rank 0 writes it
            save_checkpoint(self.checkpoint_path, {
                "kind": self.kind, "plan_hash": self.plan.source_hash, "source": self.source.state_dict(),
                "stepper": self.stepper.state_dict(), "units_done": self.units_done, "steps_done": self.steps_done,
                "interval_losses": list(self.interval_losses), "sampling": self.sampler.state_dict(),
                "surgery": self.strategy.state_dict(), "metrics_bytes": self.run.metrics_size(),
                "init_done": self.init_done, "finished": result is not None, "result": result, "models": models,
                "seconds": self.elapsed(), "rng": capture_rng(),
            })  # fmt: skip
        self.last_good = f"{self.checkpoint_path} (after {self.units.name} {self.units_done})"
        self.saved_at = time.monotonic()

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint; a finished phase only needs its sampler and strategy records."""
        self.sampler.load_state_dict(state.get("sampling"))
        self.strategy.load_state_dict(state.get("surgery"))
        if state["finished"]:
            return
        self.source.load_state_dict(state["source"])
        self.stepper.load_state_dict(state["stepper"])
        self.units_done = int(state["units_done"])
        self.steps_done = int(state.get("steps_done", self.units_done * self.units.steps_per_unit))
        self.interval_losses = [float(x) for x in state.get("interval_losses", [])]
        self.init_done = bool(state["init_done"])
        self.seconds_before, self.started = float(state["seconds"]), time.perf_counter()
        restore_rng(state["rng"])
        self.last_good = f"{self.checkpoint_path} (after {self.units.name} {self.units_done})"
        resume = {"phase": self.kind, "event": "resume", self.units.name: self.units_done}
        self.reporter.log({**resume, "steps_done": self.steps_done, "world_size": self.dist.world_size})
        self.reporter.line(f"{self.kind}: resuming from {self.units.position(self.steps_done, self.units_done)}")
