"""The torch.export importer on a zoo of modules (tests/import_models/zoo.py): exact
parameter counts, a few training steps through the Python API, and the generated weights
back into the original class (strict load) with the same outputs."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import uhn
from tests.import_models import zoo


def image() -> tuple[torch.Tensor, ...]:
    return (torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1)),)


def tokens() -> tuple[torch.Tensor, ...]:
    return (torch.randint(0, 30, (3, 5), generator=torch.Generator().manual_seed(1)),)


def graph() -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(1)
    edges = torch.randint(0, 9, (2, 24), generator=gen)
    return torch.randn(9, 12, generator=gen), edges[:, edges[0] != edges[1]]


ZOO: dict[str, tuple[Callable[[], nn.Module], Callable[[], tuple[torch.Tensor, ...]]]] = {
    "depthwise_grouped": (zoo.DepthwiseSeparable, image),
    "squeeze_excite": (zoo.SqueezeExcite, image),
    "concatenation": (zoo.DenseConcat, image),
    "vit_patch_token_position_scale_droppath": (zoo.TinyViT, image),
    "channel_shuffle": (zoo.ChannelShuffle, image),
    "convnext_permute_layernorm": (zoo.ConvNeXtBlock, image),
    "ceil_pool_log_softmax": (zoo.CeilPool, image),
    "lstm": (zoo.LSTMClassifier, tokens),
    "tied_embedding_and_head": (zoo.TiedEmbedding, tokens),
    "pyg_gcn": (zoo.pyg_gcn, graph),
    "pyg_gat": (zoo.pyg_gat, graph),
}

SMALL = {"index_freqs": 16, "hidden": 8, "blocks": 1}


def check_round_trip(model: nn.Module, x: tuple[torch.Tensor, ...]) -> None:
    """Exact count, two training steps reaching the generator, and the generated weights back
    into ``model`` (strict) with its outputs."""
    hnet = uhn.HyperNetwork.for_module(model, x, generator=SMALL)
    assert hnet.num_params == sum(p.numel() for p in model.parameters())

    optimizer = torch.optim.Adam(hnet.parameters(), lr=1e-3)
    hnet.train()
    for _ in range(2):
        out = hnet(*x)
        loss = (out / out.detach().abs().max().clamp_min(1.0)).square().mean()  # finite at any output scale
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
    assert float(hnet.generator.index_in.weight.grad.abs().sum()) > 0

    hnet.eval()
    model.load_state_dict(hnet.export_state_dict(), strict=True)
    with torch.no_grad():
        ours, theirs = hnet(*x), model(*x)
    assert ours.shape == theirs.shape
    scale = max(1.0, float(theirs.abs().max()))
    assert torch.allclose(ours, theirs, atol=1e-5 * scale, rtol=1e-4), float((ours - theirs).abs().max())


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_module_imports_trains_and_exports_back(name: str) -> None:
    factory, inputs = ZOO[name]
    torch.manual_seed(0)
    check_round_trip(factory().eval(), inputs())


# Small torchvision classifiers with the patterns the zoo reproduces (in-place dropout, version
# records, squeeze-excite, channel shuffle, concatenation); all 17 are in benchmarks/import_coverage.py.
TORCHVISION = ["mobilenet_v3_small", "mnasnet0_5", "shufflenet_v2_x0_5", "squeezenet1_0", "regnet_y_400mf"]


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_model_imports_trains_and_exports_back(name: str) -> None:
    """Run where torchvision imports beside this torch (its wheel must match the torch build)."""
    try:
        from torchvision import models
    except Exception as error:  # absent, or built for another torch ("operator torchvision::nms does not exist")
        pytest.skip(f"torchvision does not import here: {type(error).__name__}: {error}")
    torch.manual_seed(0)
    x = (torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)),)
    check_round_trip(models.get_model(name, weights=None).eval(), x)
