"""Issue #28's real-model coverage: models nobody on this project wrote, through the importer.

    python benchmarks/import_coverage.py [--only NAME ...] > benchmarks/results/import_coverage.json

For each model (torchvision classifiers, PyTorch Geometric's model classes, Hugging Face and
PyTorch transformer text classifiers, the PyTorch tutorial's LeNet) the check is the one of
tests/api/test_import_zoo.py: ``uhn.HyperNetwork.for_module`` captures it with torch.export, the
generated vector has exactly the module's parameter count, one training step reaches the
generator, and the generated weights load into the original class (``strict=True``) and give
the same outputs. A small generator (m 16, d 8) keeps a 100M-weight model affordable on a CPU;
the check is the import, not learning. Models whose library is missing are reported as
``skipped`` (torchvision needs the torch build it was made for: docs/results.md, *Real models*).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import uhn

SMALL_GENERATOR = {"index_freqs": 16, "hidden": 8, "blocks": 1}
Inputs = tuple[torch.Tensor, ...]


def images(size: int) -> Callable[[], Inputs]:
    return lambda: (torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1)),)


def tokens(vocab: int = 100, length: int = 12) -> Inputs:
    return (torch.randint(0, vocab, (2, length), generator=torch.Generator().manual_seed(1)),)


def graph() -> Inputs:
    gen = torch.Generator().manual_seed(1)
    edges = torch.randint(0, 20, (2, 60), generator=gen)
    return torch.randn(20, 16, generator=gen), edges[:, edges[0] != edges[1]]


def torchvision_model(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from torchvision import models

        return models.get_model(name, weights=None, **kwargs)

    return build


def pyg_model(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from torch_geometric.nn import models

        return getattr(models, name)(in_channels=16, hidden_channels=32, num_layers=2, out_channels=7, **kwargs)

    return build


def hugging_face(name: str) -> Callable[[], nn.Module]:
    """A stock sequence classifier of ``transformers`` at a small size, returning its logits."""

    def build() -> nn.Module:
        import transformers

        config = transformers.AutoConfig.for_model(
            name,
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
            num_labels=4,
        )
        return Logits(transformers.AutoModelForSequenceClassification.from_config(config))

    return build


class Logits(nn.Module):
    """A Hugging Face classifier called as ``model(input_ids)`` returning the logits tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).logits


class TransformerClassifier(nn.Module):
    """PyTorch's own encoder layers with a learned position table and a mean-pooled head."""

    def __init__(self, vocab: int = 100, width: int = 32, length: int = 12) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.randn(length, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, 4, 64, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(width, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(ids) + self.position).mean(1))


class LeNet(nn.Module):
    """The network of PyTorch's "Neural Networks" tutorial (unpadded 5x5 convolutions)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(16 * 5 * 5, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(nn.functional.relu(self.conv1(x)), (2, 2))
        x = nn.functional.max_pool2d(nn.functional.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc3(nn.functional.relu(self.fc2(nn.functional.relu(self.fc1(x)))))


MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[], Inputs]]] = {
    **{
        name: (torchvision_model(name), images(64))
        for name in [
            "resnet18",
            "resnet50",
            "resnext50_32x4d",
            "vgg11",
            "mobilenet_v2",
            "mobilenet_v3_small",
            "efficientnet_b0",
            "shufflenet_v2_x0_5",
            "regnet_y_400mf",
            "convnext_tiny",
            "squeezenet1_0",
            "densenet121",
            "mnasnet0_5",
            "swin_t",
        ]
    },
    "googlenet": (torchvision_model("googlenet", aux_logits=False, init_weights=False), images(64)),
    "alexnet": (torchvision_model("alexnet"), images(64)),
    "vit_b_16": (torchvision_model("vit_b_16"), images(224)),
    "pyg_GCN": (pyg_model("GCN"), graph),
    "pyg_GAT": (pyg_model("GAT", heads=2), graph),
    "pyg_GraphSAGE": (pyg_model("GraphSAGE"), graph),
    "pyg_GIN": (pyg_model("GIN"), graph),
    "hf_bert": (hugging_face("bert"), tokens),
    "hf_distilbert": (hugging_face("distilbert"), tokens),
    "torch_transformer_classifier": (TransformerClassifier, tokens),
    "tutorial_lenet": (LeNet, lambda: (torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(1)),)),
}


def resnet50() -> nn.Module:
    """For the command line's timing (docs/performance.md): ``uhn import benchmarks/import_coverage.py:resnet50``."""
    return torchvision_model("resnet50")()


def check(factory: Callable[[], nn.Module], inputs: Callable[[], Inputs]) -> dict[str, Any]:
    """Import, count, one training step, and the strict round trip into the original class."""
    torch.manual_seed(0)
    model = factory().eval()
    x = inputs()
    start = time.perf_counter()
    hnet = uhn.HyperNetwork.for_module(model, x, generator=SMALL_GENERATOR)
    import_seconds = time.perf_counter() - start
    count = sum(p.numel() for p in model.parameters())
    result: dict[str, Any] = {"num_params": count, "import_seconds": round(import_seconds, 2)}
    result["counts_equal"] = hnet.num_params == count
    hnet.train()
    out = hnet(*x).float()
    loss = (out / out.detach().abs().max().clamp_min(1.0)).square().mean()  # finite at any output scale
    loss.backward()
    result["trains"] = bool(torch.isfinite(loss)) and float(hnet.generator.index_in.weight.grad.abs().sum()) > 0
    hnet.eval()
    model.load_state_dict(hnet.export_state_dict(), strict=True)
    with torch.no_grad():
        ours, theirs = hnet(*x), model(*x)
    scale = max(1.0, float(theirs.abs().max()))
    result["output_abs_max"] = float(theirs.abs().max())  # not a constant: the comparison means something
    result["output_std"] = float(theirs.float().std())
    result["max_abs_diff"] = float((ours - theirs).abs().max())
    result["outputs_equal"] = ours.shape == theirs.shape and result["max_abs_diff"] <= 1e-4 * scale
    result["ok"] = result["counts_equal"] and result["trains"] and result["outputs_equal"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", default=None, help="model names (default: all)")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    for name in args.only or MODELS:
        factory, inputs = MODELS[name]
        start = time.perf_counter()
        try:
            results[name] = check(factory, inputs)
        except ModuleNotFoundError as error:
            results[name] = {"ok": False, "skipped": str(error)}
        except Exception as error:  # a model that fails is a result, reported with its reason
            results[name] = {
                "ok": False,
                "error": f"{type(error).__name__}: {error}"[:2000],
                "where": traceback.format_exc().splitlines()[-3:-1],
            }
        results[name]["seconds"] = round(time.perf_counter() - start, 1)
        print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
    tried = [r for r in results.values() if "skipped" not in r]
    report = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "generator": SMALL_GENERATOR,
        "passed": sum(r["ok"] for r in tried),
        "tried": len(tried),
        "models": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
