"""generator.index_width_cap (beyond the paper): a wide index field (a 5,000-token vocabulary)
keeps neighbouring indices apart in Fourier phase, so the generator can tell tokens apart."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from tests.tiny_specs import tiny_spec_data
from uhn_runtime.model.generator import UHNGenerator
from uhn_runtime.model.target import DeviceTarget
from uhn_spec import ExperimentSpec, compile_spec
from uhn_spec.descriptors import INDEX_COLUMN

VOCAB = 5000


def _text_target(cap: int | None) -> tuple[UHNGenerator, DeviceTarget]:
    """The tiny text spec with the paper's vocabulary size, F_v 512 and sigma 100."""
    data = copy.deepcopy(tiny_spec_data("text_classification"))  # its layer dicts are shared
    data["task"]["vocab_size"] = VOCAB
    data["layers"][0]["num_embeddings"] = VOCAB
    data["generator"].update({"index_freqs": 512, "index_width_cap": cap})
    plan = compile_spec(ExperimentSpec.model_validate(data))
    generator = UHNGenerator(plan.generator, plan.index_ranges, plan.structure_ranges, seed=0)
    return generator, DeviceTarget(plan.targets[0])


def _neighbour_feature_cosine(cap: int | None) -> float:
    """Mean cosine of the index features of embedding rows (t, j) and (t + 1, j)."""
    generator, target = _text_target(cap)
    param = target.plan.params[0]  # the token embedding (vocab, d)
    rows = target.index_rows()[: param.numel].view(*param.shape, -1)[:, 0].float()
    with torch.no_grad():
        feats = F.normalize(generator.index_fourier(rows).double(), dim=1)
    return float((feats[:-1] * feats[1:]).sum(1).mean())


def test_the_paper_normalisation_makes_neighbouring_tokens_alike() -> None:
    # The paper's range normalisation: one token step is 0.07 rad of phase per unit of B.
    assert _neighbour_feature_cosine(None) > 0.99


def test_a_width_cap_makes_neighbouring_tokens_distinct() -> None:
    assert abs(_neighbour_feature_cosine(64)) < 0.1


def test_the_cap_changes_only_fields_wider_than_it() -> None:
    plain, _ = _text_target(None)
    capped, _ = _text_target(64)
    wide = INDEX_COLUMN["embedding_idx"]
    narrow = [c for c in range(len(INDEX_COLUMN)) if c != wide]
    assert torch.equal(plain.index_fourier.mean, capped.index_fourier.mean)
    assert torch.equal(plain.index_fourier.inv_std[narrow], capped.index_fourier.inv_std[narrow])
    ratio = float(capped.index_fourier.inv_std[wide]) / float(plain.index_fourier.inv_std[wide])
    assert ratio == pytest.approx(VOCAB / 64, rel=1e-6)  # the field spans -1..4999: 5,000 wide
    assert torch.equal(plain.index_fourier.B, capped.index_fourier.B)


def test_target_norm_gives_every_tensor_its_init_statistics() -> None:
    """train.target_norm=standardize: step 0 has PyTorch's init mean and std per tensor, and
    the generator's gradient flows through the standardisation."""
    from uhn_runtime.model.weights import UHNSource

    data = tiny_spec_data("text_classification", target_norm="standardize")
    plan = compile_spec(ExperimentSpec.model_validate(data))
    target = DeviceTarget(plan.targets[0])
    source = UHNSource(plan, target, seed=0)
    flat = source.flat()
    stats = target.init_targets()
    mean, std = stats.stats(flat.detach())
    spread = (stats.std > 0) & (stats.counts > 1)
    assert torch.allclose(mean[spread], stats.mean[spread], atol=1e-5)
    assert torch.allclose(std[spread], stats.std[spread], rtol=1e-3)
    flat.pow(3).sum().backward()
    assert all(p.grad is not None for p in source.generator.index_in.parameters())
    raw = target.generate(source.generator).detach()
    assert not torch.allclose(raw, flat.detach())
