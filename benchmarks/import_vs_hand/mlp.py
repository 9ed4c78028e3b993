"""The module of docs/performance.md's import-against-hand-written comparison: the same
784-128-128-10 MLP as benchmarks/import_vs_hand/mlp_hand.yaml, for `uhn import`."""

from torch import nn


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, 128),
            nn.LeakyReLU(0.1),
            nn.Linear(128, 128),
            nn.LeakyReLU(0.1),
            nn.Linear(128, 10),
        )

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.net(x)
