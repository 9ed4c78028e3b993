"""Small modules with the patterns of today's vision, text and graph models that only the
torch.export importer takes (test fixtures): grouped and depthwise convolutions,
squeeze-excite gates, concatenation, patchify convolutions, a class token and position
table, layer scale, stochastic depth, channel shuffle, LayerNorm over permuted channels,
ceil-mode pooling, an LSTM, and PyG's own model classes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DepthwiseSeparable(nn.Module):
    """MobileNet's unit: a depthwise and a grouped convolution, BatchNorm, ReLU6, Hardswish."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.grouped = nn.Conv2d(8, 12, 1, groups=4)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.bn(self.stem(x)))
        x = F.hardswish(self.grouped(self.depthwise(x)))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class SqueezeExcite(nn.Module):
    """A feature map gated by a product with its own squeeze-excite vector, and an in-place
    dropout before the head (as in MobileNet v3's and EfficientNet's classifiers)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.reduce = nn.Conv2d(8, 2, 1)
        self.expand = nn.Conv2d(2, 8, 1)
        self.drop = nn.Dropout(0.2, inplace=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x))
        gate = torch.sigmoid(self.expand(F.relu(self.reduce(x.mean((2, 3), keepdim=True)))))
        return self.head(self.drop((x * gate).mean((2, 3))))


class DenseConcat(nn.Module):
    """DenseNet's growth: each layer's output concatenated to its input."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(7, 4, 3, padding=1)
        self.head = nn.Linear(11, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x, F.relu(self.a(x))], 1)
        x = torch.cat([x, F.relu(self.b(x))], 1)
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class StochasticDepth(nn.Module):
    """torchvision's stochastic depth: drops the whole residual branch in training."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.empty(x.shape[0], 1, 1, device=x.device).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class TinyViT(nn.Module):
    """A patchify convolution, a class token, a learned position table, layer scale and
    stochastic depth around a transformer block, the first token to the head."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 5, dim) * 0.02)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.gamma = nn.Parameter(1e-1 * torch.ones(dim))
        self.drop_path = StochasticDepth(0.1)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        h = self.norm1(x)
        x = x + self.drop_path(self.gamma * self.attn(h, h, h, need_weights=False)[0])
        return self.head(self.norm(x)[:, 0])


class ChannelShuffle(nn.Module):
    """ShuffleNet's grouped convolution then channel shuffle (view, transpose, reshape). Its
    loader requires the state dict's version record, as torchvision's MNASNet's does."""

    _version = 2

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.head = nn.Linear(8, 3)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args):  # type: ignore[no-untyped-def]
        if local_metadata.get("version") is None:
            raise ValueError("version should be set to 2 instead of None")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.grouped(F.relu(self.conv(x)))
        b, c, h, w = x.size()
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.head(x.mean((2, 3)))


class ConvNeXtBlock(nn.Module):
    """ConvNeXt: depthwise 7x7, permute to channels-last, LayerNorm over channels, an MLP,
    layer scale, permute back, residual; a stem with an even (patchify) kernel."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 2, stride=2)
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pw1 = nn.Linear(dim, 4 * dim)
        self.pw2 = nn.Linear(4 * dim, dim)
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), 1e-1))
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pw2(F.gelu(self.pw1(self.norm(y)))).permute(0, 3, 1, 2)
        x = x + self.layer_scale * y
        return self.head(x.mean((-2, -1)))


class CeilPool(nn.Module):
    """MaxPool with ceil_mode, function-form adaptive pooling and log_softmax at the end."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.head = nn.Linear(6 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv(x)))
        return F.log_softmax(self.head(F.adaptive_avg_pool2d(x, 2).flatten(1)), dim=1)


class LSTMClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(30, 8)
        self.rnn = nn.LSTM(8, 6, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embed(tokens))[0][:, -1])


def pyg_gcn() -> nn.Module:
    from torch_geometric.nn.models import GCN

    return GCN(12, 8, num_layers=2, out_channels=3)


def pyg_gat() -> nn.Module:
    from torch_geometric.nn.models import GAT

    return GAT(12, 8, num_layers=2, out_channels=3, heads=2)


class TiedEmbedding(nn.Module):
    """A language-model head sharing the embedding's weight (one tensor, two state keys)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(30, 8)
        self.mix = nn.Linear(8, 8)
        self.decoder = nn.Linear(8, 30, bias=False)
        self.decoder.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.tanh(self.mix(self.embed(tokens))).mean(1))
