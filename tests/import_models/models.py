"""Small stock PyTorch models that `uhn import` must turn into specs (test fixtures).

They are ordinary user code: a torchvision-style CIFAR ResNet (basic blocks, BatchNorm,
projection shortcuts), an nn.TransformerEncoder text classifier, and PyG two-layer GCN and GAT models.
``resnet18`` is the full CIFAR-10 ResNet-18 (11,173,962 parameters).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return F.relu(out)


class ResNet(nn.Module):
    def __init__(
        self,
        blocks: tuple[int, ...] = (2, 2, 2, 2),
        widths: tuple[int, ...] = (64, 128, 256, 512),
        num_classes: int = 10,
    ):
        super().__init__()
        self.in_planes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages = []
        for i, (count, width) in enumerate(zip(blocks, widths)):
            stages.append(self._stage(width, count, 1 if i == 0 else 2))
        self.stages = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1], num_classes)

    def _stage(self, planes: int, count: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (count - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.stages(out)
        out = self.avgpool(out)
        out = torch.flatten(out, 1)
        return self.fc(out)


def resnet18() -> ResNet:
    return ResNet()


def tiny_resnet() -> ResNet:
    return ResNet(blocks=(1, 1), widths=(4, 8), num_classes=3)


def tiny_resnet10() -> ResNet:
    """tiny_resnet with CIFAR-10's 10 classes: stands in for resnet18 in the README example's test."""
    return ResNet(blocks=(1, 1), widths=(4, 8), num_classes=10)


class TextTransformer(nn.Module):
    def __init__(
        self,
        vocab: int = 50,
        dim: int = 16,
        heads: int = 2,
        layers: int = 2,
        classes: int = 3,
        norm_first: bool = False,
    ):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=4 * dim, dropout=0.1, batch_first=True, norm_first=norm_first
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.encoder(self.embed(tokens))
        return self.head(x.mean(dim=1))


def pre_ln_transformer() -> TextTransformer:
    return TextTransformer(norm_first=True, layers=1)


class GCN(nn.Module):
    def __init__(self, features: int = 3703, hidden: int = 16, classes: int = 6):
        super().__init__()
        from torch_geometric.nn import GCNConv

        self.conv1 = GCNConv(features, hidden)
        self.conv2 = GCNConv(hidden, classes)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        x = F.dropout(x, p=0.5, training=self.training)
        x = F.relu(self.conv1(x, edge_index))
        x = F.dropout(x, p=0.5, training=self.training)
        return self.conv2(x, edge_index)


def tiny_gcn() -> GCN:
    return GCN(features=12, hidden=8, classes=3)


class WithLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, 4, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def wider_tiny_resnet() -> ResNet:
    return ResNet(blocks=(1, 1), widths=(4, 16), num_classes=3)


class GAT(nn.Module):
    """PyG's two-layer GAT (Velickovic et al.): dropout before each GATConv at its attention
    dropout rate, 8 heads concatenated, ELU, then one averaged head."""

    def __init__(
        self,
        features: int = 3703,
        hidden: int = 8,
        heads: int = 8,
        classes: int = 6,
        dropout: float = 0.6,
        input_dropout: float | None = None,
    ):
        super().__init__()
        from torch_geometric.nn import GATConv

        self.input_dropout = dropout if input_dropout is None else input_dropout
        self.conv1 = GATConv(features, hidden, heads=heads, dropout=dropout)
        self.conv2 = GATConv(hidden * heads, classes, heads=1, concat=False, dropout=dropout)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        x = F.dropout(x, p=self.input_dropout, training=self.training)
        x = F.elu(self.conv1(x, edge_index))
        x = F.dropout(x, p=self.input_dropout, training=self.training)
        return self.conv2(x, edge_index)


def tiny_gat() -> GAT:
    return GAT(features=12, hidden=4, heads=2, classes=3)


class GATNeedsArguments(GAT):
    def __init__(self, features: int, hidden: int = 4):
        super().__init__(features=features, hidden=hidden)


class DataDependent(nn.Module):
    """Python control flow on a tensor's value: torch.export cannot capture it."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.head(x)
        return self.head(-x)
