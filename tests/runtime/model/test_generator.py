"""The generator: paper parameter counts, chunked generation equal to one-shot generation,
and gradients reaching H through the functional target."""

from __future__ import annotations

import pytest
import torch

from tests.tiny_specs import tiny_spec
from uhn_runtime.model.generator import UHNGenerator, count_generator_params
from uhn_runtime.model.target import DeviceTarget
from uhn_spec import compile_spec
from uhn_spec.spec import GeneratorSpec


@pytest.mark.parametrize(
    ("spec", "trainable", "total"),
    [
        (GeneratorSpec(index_freqs=1024, hidden=64), 148_353, 158_613),  # MNIST (small) config
        (GeneratorSpec(), 591_617, 612_117),  # default (large) config
        (GeneratorSpec(structure_encoder=True), 641_665, 663_151),  # large + structure encoder
    ],
)
def test_parameter_counts_match_the_paper(spec: GeneratorSpec, trainable: int, total: int) -> None:
    assert count_generator_params(spec) == (trainable, total)


def _generator_and_target(structure: bool) -> tuple[UHNGenerator, DeviceTarget]:
    spec = tiny_spec("text_classification")  # several kinds of parameter tensors, 1,130 rows
    spec = spec.model_copy(update={"generator": spec.generator.model_copy(update={"structure_encoder": structure})})
    plan = compile_spec(spec)
    generator = UHNGenerator(plan.generator, plan.index_ranges, plan.structure_ranges, seed=5)
    if structure:  # the head starts at zero; make the structure path matter for the test
        torch.nn.init.normal_(generator.structure.head.weight, std=0.1)  # type: ignore[union-attr]
    return generator, DeviceTarget(plan.targets[0])


def _weights_and_grads(generator: UHNGenerator, target: DeviceTarget, chunk_rows: int):
    generator.zero_grad(set_to_none=True)
    flat = target.generate(generator, chunk_rows=chunk_rows)
    probe = torch.randn(flat.shape, generator=torch.Generator().manual_seed(0))
    (flat * probe).sum().backward()
    grads = {name: p.grad.clone() for name, p in generator.named_parameters() if p.grad is not None}
    return flat.detach(), grads


@pytest.mark.parametrize("structure", [False, True])
def test_chunked_generation_gives_the_same_weights_and_gradients(structure: bool) -> None:
    generator, target = _generator_and_target(structure)
    n = target.num_params
    whole, whole_grads = _weights_and_grads(generator, target, chunk_rows=n)
    chunked, chunked_grads = _weights_and_grads(generator, target, chunk_rows=97)  # uneven last chunk
    assert whole.shape == (n,)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    assert whole_grads.keys() == chunked_grads.keys()
    assert len(whole_grads) == sum(1 for p in generator.parameters() if p.requires_grad)
    for name in whole_grads:
        torch.testing.assert_close(chunked_grads[name], whole_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_no_grad_generation_equals_generation_with_grad() -> None:
    generator, target = _generator_and_target(False)
    with torch.no_grad():
        plain = target.generate(generator, chunk_rows=101)
    torch.testing.assert_close(plain, target.generate(generator, chunk_rows=101).detach(), rtol=1e-5, atol=1e-6)


def test_target_loss_gradients_reach_every_generator_parameter() -> None:
    generator, target = _generator_and_target(False)
    tokens = torch.randint(3, 24, (4, 6), generator=torch.Generator().manual_seed(1))
    tokens[:, 0] = 2
    outputs = target.forward(target.generate(generator), x=tokens, padding_mask=tokens == 1)
    assert outputs.shape == (4, 2)
    outputs.logsumexp(dim=1).sum().backward()
    for name, p in generator.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
