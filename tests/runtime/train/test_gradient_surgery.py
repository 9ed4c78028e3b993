"""Several tasks a step and PCGrad (``train.tasks_per_step``, ``train.gradient_surgery``):
the projection, the k-task draw, the spec checks, and a tiny multi-task run with PCGrad
that records what it saw and resumes exactly."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

import uhn_runtime.train.steps as steps_module
from tests.conftest import RecordSteps
from tests.runtime.train.test_multitask import TRAIN, multitask_file, options, run_whole_and_resumed, spec_error
from uhn_runtime.train.checkpoint import load_checkpoint
from uhn_runtime.train.draws import architecture_draw
from uhn_runtime.train.gradient_surgery import project_conflicts, projection_orders
from uhn_runtime.train.optim import Stepper, make_adamw
from uhn_runtime.train.precision import Precision
from uhn_runtime.train.run import TIMING_FIELDS, check_tasks_per_step, start_run
from uhn_spec.errors import UHNError
from uhn_spec.modes.multitask import compile_multitask, load_multitask

PCGRAD = {"tasks_per_step": 2, "gradient_surgery": "pcgrad"}

# --------------------------------------------------------------------------- the projection


def test_conflicting_gradients_lose_their_conflicting_component() -> None:
    g = torch.tensor([[1.0, 0.0, 2.0], [-1.0, 1.0, 0.0]])  # g0 . g1 = -1 < 0
    result = project_conflicts(g, [[1], [0]])
    assert result.projections == 2
    assert result.cosines[(0, 1)] < 0
    for i, j in ((0, 1), (1, 0)):  # each projected gradient is orthogonal to the other's original
        assert float(result.gradients[i] @ g[j]) == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(result.gradients[0], torch.tensor([0.5, 0.5, 2.0]))
    assert result.norms == pytest.approx((5**0.5, 2**0.5))


def test_gradients_that_do_not_conflict_are_left_alone_and_averaged() -> None:
    g = torch.tensor([[1.0, 2.0, 0.0], [0.5, 0.0, 3.0], [0.0, 1.0, 1.0]])  # all inner products >= 0
    result = project_conflicts(g, projection_orders(0, 7, 3))
    assert result.projections == 0
    assert torch.equal(result.gradients, g)
    assert torch.allclose(result.mean_gradient, g.mean(dim=0))  # the gradient of the mean loss


def test_projection_order_is_a_seeded_pure_function_of_seed_and_step() -> None:
    orders = [projection_orders(3, step, 4) for step in range(50)]
    assert orders == [projection_orders(3, step, 4) for step in range(50)]
    assert orders != [projection_orders(4, step, 4) for step in range(50)]
    for order in orders:  # each gradient meets every other once
        assert [sorted(o) for o in order] == [[j for j in range(4) if j != i] for i in range(4)]
    assert len({tuple(order[0]) for order in orders}) > 1  # the order does vary


def test_a_step_on_given_gradients_is_the_step_on_the_loss() -> None:
    """PCGrad's path through the optimiser (gradients taken alone, then one step) is the
    ordinary step when nothing is projected, clipping included."""
    results = []
    for split in (False, True):
        torch.manual_seed(0)
        layer = torch.nn.Linear(4, 3)
        stepper = Stepper(make_adamw(layer.parameters(), 0.1), Precision("cpu", None), grad_clip=0.05)
        loss = layer(torch.ones(2, 4)).pow(2).sum()
        if split:
            stepper.step_on(stepper.gradients(loss))
        else:
            stepper.step(loss)
        results.append([p.detach().clone() for p in layer.parameters()])
    for a, b in zip(*results):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- the draw


def test_k_task_draws_are_distinct_weighted_and_a_pure_function_of_seed_and_step() -> None:
    probabilities = [0.6, 0.3, 0.1]
    draws = [architecture_draw(5, step, 3, 2, probabilities=probabilities) for step in range(4000)]
    with torch.random.fork_rng():  # no global RNG is read
        torch.manual_seed(1)
        assert draws == [architecture_draw(5, step, 3, 2, probabilities=probabilities) for step in range(4000)]
    assert draws != [architecture_draw(6, step, 3, 2, probabilities=probabilities) for step in range(4000)]
    assert all(len(set(d)) == 2 for d in draws)  # without replacement
    # The first task of a k-task draw is the one-task draw: k only adds tasks after it.
    assert [d[0] for d in draws] == [
        architecture_draw(5, step, 3, probabilities=probabilities)[0] for step in range(4000)
    ]
    # The probable tasks are in most steps' pairs, the rare one in fewer (exactly: the pair
    # probabilities of successive weighted draws without replacement).
    counts = Counter(position for d in draws for position in d)
    pair = {0: 0.6 + 0.3 * 0.6 / 0.7 + 0.1 * 0.6 / 0.9, 2: 0.1 + 0.6 * 0.1 / 0.4 + 0.3 * 0.1 / 0.7}
    for position, share in pair.items():
        assert counts[position] / len(draws) == pytest.approx(share, abs=0.03)
    assert all(sorted(architecture_draw(5, step, 3, 3, probabilities=probabilities)) == [0, 1, 2] for step in range(50))


# --------------------------------------------------------------------------- the spec


@pytest.mark.parametrize(
    ("train", "expected"),
    [
        ({"tasks_per_step": 0}, "train.tasks_per_step: Input should be greater than or equal to 1"),
        ({"tasks_per_step": 3}, "train.tasks_per_step: 3 exceeds the 2 tasks"),
        ({"gradient_surgery": "pcgrad"}, "train.gradient_surgery: pcgrad projects the gradients of several tasks"),
        ({"gradient_surgery": "mgda"}, "train.gradient_surgery"),
    ],
)
def test_tasks_per_step_and_gradient_surgery_are_checked(tmp_path: Path, train: dict[str, Any], expected: str) -> None:
    message = spec_error(tmp_path, train={**TRAIN, **train})
    assert expected in message and "\n" not in message, message


def test_several_tasks_a_step_are_refused_under_torchrun(tmp_path: Path) -> None:
    plan = compile_multitask(load_multitask(multitask_file(tmp_path, train={**TRAIN, **PCGRAD})))
    check_tasks_per_step(plan, 1)
    with pytest.raises(
        UHNError, match=r"^train.tasks_per_step: 2 with gradient_surgery pcgrad runs in one process"
    ) as err:
        check_tasks_per_step(plan, 2)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- a run


def test_a_pcgrad_run_trains_every_drawn_task_on_its_own_batch_and_records_the_surgery(tmp_path: Path) -> None:
    steps = RecordSteps()
    plan = compile_multitask(load_multitask(multitask_file(tmp_path, train={**TRAIN, **PCGRAD})))
    summary = start_run(plan, tmp_path / "run", options(observers=(steps,)))
    seen = [list(zip(e.targets, e.batch_sizes)) for e in steps.events]
    assert len(seen) == TRAIN["steps"]
    assert all(sorted(name for name, _ in step) == ["tiny_formula", "tiny_images"] for step in seen)
    sizes = {
        name: max(size for step in seen for n, size in step if n == name) for name in ("tiny_images", "tiny_formula")
    }
    assert sizes == {"tiny_images": 64, "tiny_formula": 32}  # each its own batches (the last of an epoch: shorter)
    assert (summary["tasks_per_step"], summary["gradient_surgery"]) == (2, "pcgrad")
    assert summary["task_sampling"]["draws"] == {"tiny_images": 12, "tiny_formula": 12}
    surgery = summary["pcgrad"]
    assert surgery["steps"] == 12 and set(surgery["grad_norm"]) == {"tiny_images", "tiny_formula"}
    assert list(surgery["cosine"]) == ["tiny_formula/tiny_images"] and -1 <= surgery["mean_cosine"] <= 1
    assert 0 <= surgery["projections"] <= 2 * 12
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    intervals = [r["pcgrad"] for r in records if r["event"] == "train"]
    assert [i["steps"] for i in intervals] == [4, 4, 4]  # each interval's own steps
    assert sum(i["projections"] for i in intervals) == surgery["projections"]
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (info["tasks_per_step"], info["gradient_surgery"]) == (2, "pcgrad")


def test_resumed_pcgrad_run_ends_with_the_weights_and_records_of_an_uninterrupted_run(tmp_path: Path) -> None:
    """bf16 autocast and clipping on; killed at step 6, resumed from the checkpoint at 4."""
    train = {**TRAIN, **PCGRAD, "precision": "bf16", "grad_clip": 0.5}
    plan = compile_multitask(load_multitask(multitask_file(tmp_path, train=train)))
    whole_summary, resumed_summary = run_whole_and_resumed(plan, tmp_path)
    assert whole_summary["pcgrad"] == resumed_summary["pcgrad"]

    def records(run: str) -> list[dict[str, Any]]:
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        kept = [{k: v for k, v in json.loads(line).items() if k not in TIMING_FIELDS} for line in lines]
        return [r for r in kept if r["event"] != "resume"]

    assert records("whole") == records("killed")


def test_pcgrad_without_projections_is_the_step_on_the_mean_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The surgery path (each task's gradient alone, then their mean) with the projections
    left out steps on the gradient tasks_per_step without surgery steps on (that of the mean
    loss), up to the order of floating-point sums: the learning rate means the same with and
    without surgery. Compared at the first task step, where both start from the same weights
    (Adam would amplify rounding differences in near-zero components over later steps)."""
    stepped: dict[str, list[torch.Tensor]] = {}
    original_apply = Stepper.apply
    for surgery in ("none", "pcgrad"):
        train = {
            **TRAIN,
            "tasks_per_step": 2,
            "gradient_surgery": surgery,
            "precision": "fp32",
            "steps": 2,
            "warmup": 0,
        }
        plan = compile_multitask(load_multitask(multitask_file(tmp_path, train=train)))
        grads = stepped[surgery] = []

        def recording(self: Stepper, grads: list[torch.Tensor] = grads) -> None:
            grads.append(torch.cat([p.grad.reshape(-1) for p in self.params() if p.grad is not None]))
            original_apply(self)

        with monkeypatch.context() as patch:
            patch.setattr(Stepper, "apply", recording)
            patch.setattr(
                steps_module, "project_conflicts", lambda g, orders: project_conflicts(g, [[] for _ in orders])
            )
            start_run(plan, tmp_path / surgery, options())
    init_steps = TRAIN["init_steps"]
    for before, after in zip(stepped["none"][:init_steps], stepped["pcgrad"][:init_steps]):
        assert torch.equal(before, after)  # the init phase: one task a step, no surgery
    none, pcgrad = stepped["none"][init_steps], stepped["pcgrad"][init_steps]
    assert torch.allclose(none, pcgrad, rtol=1e-5, atol=1e-6 * float(none.abs().max()))
    # With the projections, the tiny run's tasks conflict (as the measured ones do) and it ends elsewhere.
    summary = start_run(plan, tmp_path / "projected", options())
    assert summary["pcgrad"]["projections"] > 0
    projected = load_checkpoint(tmp_path / "projected" / "checkpoints" / "uhn.pt")["source"]
    unprojected = load_checkpoint(tmp_path / "pcgrad" / "checkpoints" / "uhn.pt")["source"]
    assert any(not torch.allclose(v, projected[k], rtol=1e-3, atol=1e-5) for k, v in unprojected.items())
