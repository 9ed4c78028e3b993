"""The property harness every layer kind's test runs over hypothesis-generated specs.

A kind's test (``tests/spec/layers/test_<kind>.py``) draws small valid ``ExperimentSpec``s that
use the kind and calls ``check_layer_properties`` on each. ``test_registry.py`` fails when a
registered kind has no such test.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.func import functional_call

from uhn_runtime.model.generator import UHNGenerator
from uhn_runtime.model.naive import naive_generate
from uhn_spec import ExperimentSpec, Plan, build_model, compile_spec
from uhn_spec.descriptors import Ranges
from uhn_spec.modes.single import spec_from_text
from uhn_spec.plan import TargetPlan
from uhn_spec.spec import spec_to_yaml

SQRT3 = math.sqrt(3.0)


def make_spec(
    layers: list[dict[str, Any]], task: dict[str, Any], family: str, name: str = "prop", **extra: Any
) -> ExperimentSpec:
    """Validate a spec given as plain data (what a YAML file would hold)."""
    data = {"name": name, "family": family, "task": task, "layers": layers, **extra}
    return ExperimentSpec.model_validate(data)


def synthetic_task(task_type: str, input_dims: list[int], num_outputs: int, **kw: Any) -> dict[str, Any]:
    return {
        "dataset": "synthetic",
        "synthetic": {"task_type": task_type, "input_dims": input_dims, "num_outputs": num_outputs},
        **kw,
    }


def example_inputs(spec: ExperimentSpec, seed: int = 0) -> dict[str, torch.Tensor]:
    """A small batch the spec's model accepts, by the task's input kind."""
    gen = torch.Generator().manual_seed(seed)
    info = spec.task.info
    if info.input_kind == "image":
        return {"x": torch.randn(3, *info.input_dims, generator=gen)}
    if info.input_kind == "vector":
        return {"x": torch.rand(5, *info.input_dims, generator=gen) * 2 - 1}
    if info.input_kind == "nodes":
        nodes = 9
        edges = torch.randint(0, nodes, (2, 24), generator=gen)
        return {"x": torch.randn(nodes, info.input_dims[0], generator=gen), "edge_index": edges}
    max_len = getattr(spec.layers[0], "max_length", 6)
    length = max(2, min(6, max_len))
    tokens = torch.randint(3, spec.task.vocab_size, (3, length), generator=gen)
    tokens[:, 0] = 2  # <cls>
    tokens[1, -1] = 1  # one padded position
    return {"x": tokens, "padding_mask": tokens == 1}


def flat_to_params(target: TargetPlan, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    return {p.name: flat[p.offset : p.offset + p.numel].view(p.shape) for p in target.params}


def check_layer_properties(spec: ExperimentSpec) -> None:
    plan = compile_spec(spec)
    target = plan.targets[0]
    model = build_model(spec).eval()
    n = sum(p.numel() for p in model.parameters())

    # Plan rows == parameter count, and the param table is the skeleton's named_parameters().
    assert target.num_params == n
    assert [p.name for p in target.params] == [name for name, _ in model.named_parameters()]
    assert [p.shape for p in target.params] == [tuple(t.shape) for _, t in model.named_parameters()]
    # Each tensor's param_type is the one its kind declares (the docs table's source).
    for p in target.params:
        assert p.param_type == spec.flat_layers[p.layer][1].param_types[p.name.rsplit(".", 1)[1]], p.name

    # Slices tile the flat vector exactly once, in order.
    cover = torch.zeros(n, dtype=torch.int64)
    for p in target.params:
        assert p.numel == math.prod(p.shape)
        cover[p.offset : p.offset + p.numel] += 1
    assert bool((cover == 1).all())

    # Descriptors: finite, inside their normalisation ranges, identical across compiles.
    index_rows = target.index_rows()
    assert index_rows.shape == (n, 10)
    index = plan.index_ranges.normalise(index_rows)
    structure = plan.structure_ranges.normalise(target.structure_rows())
    for rows in (index, structure):
        assert bool(torch.isfinite(rows).all())
        assert float(rows.abs().max()) <= SQRT3 + 1e-5
    assert_ranges_of_compact_form_equal_those_of_rows(target)
    check_generation_from_descriptors(plan)
    again = compile_spec(spec).targets[0]
    assert torch.equal(again.index_rows(), index_rows)
    assert torch.equal(again.local_rows, target.local_rows)
    assert torch.equal(again.global_row, target.global_row)

    # functional_call with a flat vector == the module with the same weights loaded.
    inputs = example_inputs(spec)
    # Noise around each tensor's init mean, as a generator after its init phase gives: a KAN
    # grid (lower bound -1, log length ln 2) then covers its inputs instead of sitting at 0.
    means = torch.repeat_interleave(
        torch.tensor([p.init_mean for p in target.params]), torch.tensor([p.numel for p in target.params])
    )
    noise = torch.randn(n, generator=torch.Generator().manual_seed(1)) * 0.2
    flat = (means + noise).requires_grad_(True)
    out_functional = functional_call(model, flat_to_params(target, flat), args=(), kwargs=inputs)
    loaded = build_model(spec).eval()
    # Buffers (BatchNorm running statistics) are not generated: the skeleton's own go along.
    buffers = dict(model.named_buffers())
    loaded.load_state_dict({**buffers, **{k: v.detach() for k, v in flat_to_params(target, flat).items()}})
    out_loaded = loaded(**inputs)
    assert torch.allclose(out_functional, out_loaded, atol=1e-5, rtol=1e-4)

    # Every slice passes gradient back to the flat (generated) vector, except those a kind
    # declares gradient-free, whose gradient must then vanish (up to rounding).
    weights = torch.randn(out_functional.shape, generator=torch.Generator().manual_seed(2))
    (out_functional * weights).sum().backward()
    assert flat.grad is not None and bool(torch.isfinite(flat.grad).all())
    for p in target.params:
        grad = flat.grad[p.offset : p.offset + p.numel]
        if p.name.rsplit(".", 1)[1] in spec.flat_layers[p.layer][1].gradient_free_params:
            assert float(grad.abs().sum()) < 1e-4, p.name
        elif p.numel:
            assert float(grad.abs().sum()) > 0, p.name

    # Under bf16 autocast (what `precision: auto` gives on bf16 hardware) the forward and
    # backward run, stay finite and stay near the fp32 output.
    low = flat.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_bf16 = functional_call(model, flat_to_params(target, low), args=(), kwargs=inputs)
    (out_bf16.float() * weights).sum().backward()
    assert bool(torch.isfinite(out_bf16).all()) and low.grad is not None and bool(torch.isfinite(low.grad).all())
    # bf16 keeps ~3 significant digits of each term; an output that is a small difference of
    # O(1) terms (weights near their init, unit inputs) keeps them of the terms, not of itself.
    scale = max(float(out_functional.detach().abs().max()), 1.0)
    assert float((out_bf16.detach().float() - out_functional.detach()).abs().max()) <= 0.1 * scale

    # spec -> YAML -> spec round-trips.
    assert spec_from_text(spec_to_yaml(spec)) == spec


def assert_ranges_of_compact_form_equal_those_of_rows(target: TargetPlan) -> None:
    """The index ranges computed from the compact descriptors are those of the expanded rows."""
    compact, of_rows = target.index.ranges(), Ranges.of_rows(target.index_rows())
    assert torch.equal(compact.lo, of_rows.lo) and torch.equal(compact.hi, of_rows.hi)


def check_generation_from_descriptors(plan: Plan) -> None:
    """A small generator gives the same weights from the compact descriptors (factored work
    units) as from the explicit index rows (one key per row), both to within fp32 rounding of
    the naive generator run in float64."""
    target = plan.targets[0]
    spec = plan.generator.model_copy(update={"index_freqs": 16, "hidden": 8, "blocks": 1, "structure_encoder": False})
    torch.manual_seed(0)
    generator = UHNGenerator(spec, plan.index_ranges, plan.structure_ranges, seed=0)
    rows = target.index_rows()
    with torch.no_grad():
        compact = generator(target.index)
        explicit = generator(rows)
        exact = naive_generate(generator, rows, dtype=torch.float64)
    assert compact.shape == explicit.shape == (target.num_params,)
    if exact.numel():
        scale = float(exact.abs().max())
        for got in (compact, explicit):
            assert float((got.double() - exact).abs().max()) <= 5e-5 * scale
