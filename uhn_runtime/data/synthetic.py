"""Generated data of any task shape (tests, demos), and the in-memory dataset classes.

``task.synthetic`` chooses the task type, input dims and number of outputs. Inputs are
seeded random draws and the labels (or regression targets) come from a fixed random teacher,
so a model can learn them and the loss goes down. The data never depends on the run's seed:
like a real dataset, it is the same for every run.

* image: x ~ N(0, 1) of shape (C, H, W); label = argmax of a random linear map of x.
* formula: x ~ U(-1, 1) of shape (F,); targets = a random one-hidden-layer tanh network.
* text: ``input_dims[0]`` is the sequence length (capped at ``task.max_length``); token 2
  (<cls>) first, then random tokens from 3 .. vocab_size - 1 and <pad> = 1 after a random
  length; label = argmax of the summed random per-token class scores.
* graph: ``num_examples`` nodes with N(0, 1) features and labels from a random linear map;
  4 random edges per node, mostly to nodes of the same class (so message passing helps),
  both directions; random 60/20/20 train/val/test node masks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from uhn_spec.enums import TaskType
from uhn_spec.spec import SyntheticShape, TaskSpec

from .task_data import Batch, DataError, Split, TaskData, register_loader

SYNTHETIC_SEED = 1234
CLS_TOKEN, PAD_TOKEN, FIRST_WORD = 2, 1, 3
EDGES_PER_NODE = 4
SAME_CLASS_EDGE_PROB = 0.8
SYNTHETIC_TRAIN_FRACTION = 0.7  # split_examples' default: what is left after val 0.1 and test 0.2
SYNTHETIC_TEXT_LENGTH = 128  # tokens per example of synthetic_batch when the task sets no max_length


@dataclass(kw_only=True)
class TensorData(TaskData):
    """Examples held as tensors, split once. ``pad_token`` marks text: batches are trimmed
    to their longest sequence and carry the padding mask."""

    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]
    pad_token: int | None = None

    def _batch(self, inputs: torch.Tensor, targets: torch.Tensor) -> Batch:
        if self.pad_token is None:
            return Batch(inputs, targets)
        is_pad = inputs == self.pad_token
        longest = int((~is_pad).sum(dim=1).max())
        inputs = inputs[:, :longest]
        return Batch(inputs, targets, padding_mask=inputs == self.pad_token)

    def _split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in self.splits:
            raise DataError(f"this dataset has no {name!r} split; it has: {', '.join(self.splits)}")
        return self.splits[name]

    def train_batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        inputs, targets = self._split("train")
        order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed))
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            yield self._batch(inputs[chosen], targets[chosen])

    def eval_batches(self, split: Split, batch_size: int) -> Iterator[Batch]:
        inputs, targets = self._split(split)
        for start in range(0, len(targets), batch_size):
            yield self._batch(inputs[start : start + batch_size], targets[start : start + batch_size])

    def num_train_batches(self, batch_size: int) -> int:
        return math.ceil(len(self._split("train")[1]) / batch_size)


@dataclass(kw_only=True)
class GraphData(TaskData):
    """One graph, trained full-batch: every epoch is one batch whose node mask selects the
    split's nodes."""

    x: torch.Tensor
    y: torch.Tensor
    edge_index: torch.Tensor
    masks: dict[str, torch.Tensor]

    def _batch(self, split: str) -> Batch:
        if split not in self.masks:
            raise DataError(f"this graph has no {split!r} mask; it has: {', '.join(self.masks)}")
        return Batch(self.x, self.y, edge_index=self.edge_index, node_mask=self.masks[split])

    def train_batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        yield self._batch("train")

    def eval_batches(self, split: Split, batch_size: int) -> Iterator[Batch]:
        yield self._batch(split)

    def num_train_batches(self, batch_size: int) -> int:
        return 1


def split_examples(
    inputs: torch.Tensor, targets: torch.Tensor, generator: torch.Generator, val: float = 0.1, test: float = 0.2
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A seeded random train/val/test split."""
    n = len(targets)
    order = torch.randperm(n, generator=generator)
    n_test, n_val = int(n * test), int(n * val)
    parts = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
    return {name: (inputs[idx], targets[idx]) for name, idx in parts.items()}


def teacher_labels(features: torch.Tensor, classes: int, gen: torch.Generator) -> torch.Tensor:
    weights = torch.randn(features.shape[1], classes, generator=gen)
    return (features @ weights).argmax(dim=1)


def image_data(shape: SyntheticShape, task: TaskSpec, gen: torch.Generator) -> TensorData:
    x = torch.randn(shape.num_examples, *shape.input_dims, generator=gen)
    y = teacher_labels(x.flatten(1), shape.num_outputs, gen)
    return TensorData(metric=task.info.metric, splits=split_examples(x, y, gen))


def formula_data(shape: SyntheticShape, task: TaskSpec, gen: torch.Generator) -> TensorData:
    x = torch.rand(shape.num_examples, shape.input_dims[0], generator=gen) * 2 - 1
    hidden = 16
    w1 = torch.randn(shape.input_dims[0], hidden, generator=gen)
    w2 = torch.randn(hidden, shape.num_outputs, generator=gen) / math.sqrt(hidden)
    y = torch.tanh(x @ w1) @ w2
    return TensorData(metric=task.info.metric, splits=split_examples(x, y, gen))


def text_data(shape: SyntheticShape, task: TaskSpec, gen: torch.Generator) -> TensorData:
    n, length = shape.num_examples, shape.input_dims[0]
    if task.max_length is not None:  # never longer than the embedding's positional table
        length = min(length, task.max_length)
    vocab_size = task.vocab_size
    if length < 2:
        raise DataError(f"task.synthetic.input_dims: text needs a sequence length >= 2, got {length}")
    tokens = torch.randint(FIRST_WORD, vocab_size, (n, length), generator=gen)
    tokens[:, 0] = CLS_TOKEN
    lengths = torch.randint(max(2, length // 2), length + 1, (n, 1), generator=gen)
    tokens[torch.arange(length).expand(n, -1) >= lengths] = PAD_TOKEN
    scores = torch.randn(vocab_size, shape.num_outputs, generator=gen)
    # Centred per class over the words, so no class wins on sequence length alone.
    scores[FIRST_WORD:] -= scores[FIRST_WORD:].mean(dim=0)
    scores[:FIRST_WORD] = 0  # specials carry no class evidence
    y = scores[tokens].sum(dim=1).argmax(dim=1)
    return TensorData(metric=task.info.metric, splits=split_examples(tokens, y, gen), pad_token=PAD_TOKEN)


def graph_data(shape: SyntheticShape, task: TaskSpec, gen: torch.Generator) -> GraphData:
    n, classes = shape.num_examples, shape.num_outputs
    x = torch.randn(n, shape.input_dims[0], generator=gen)
    y = teacher_labels(x, classes, gen)
    src = torch.arange(n).repeat_interleave(EDGES_PER_NODE)
    # Same-class neighbour: a random position inside the source's class block of the
    # class-sorted node order; otherwise any node.
    by_class = torch.argsort(y, stable=True)
    counts = torch.bincount(y, minlength=classes)
    starts = torch.cumsum(counts, 0) - counts
    pick = (torch.rand(len(src), generator=gen) * counts[y[src]]).long()
    same = by_class[starts[y[src]] + pick]
    anywhere = torch.randint(0, n, (len(src),), generator=gen)
    dst = torch.where(torch.rand(len(src), generator=gen) < SAME_CLASS_EDGE_PROB, same, anywhere)
    edge_index = torch.stack([torch.cat([src, dst]), torch.cat([dst, src])])
    order = torch.randperm(n, generator=gen)
    bounds = {"train": (0, int(0.6 * n)), "val": (int(0.6 * n), int(0.8 * n)), "test": (int(0.8 * n), n)}
    masks = {}
    for name, (lo, hi) in bounds.items():
        mask = torch.zeros(n, dtype=torch.bool)
        mask[order[lo:hi]] = True
        masks[name] = mask
    return GraphData(metric=task.info.metric, x=x, y=y, edge_index=edge_index, masks=masks)


# The generated data of each task type a synthetic dataset may have (``SyntheticTaskType``).
SYNTHETIC_DATA: dict[TaskType, Callable[[SyntheticShape, TaskSpec, torch.Generator], TaskData]] = {
    TaskType.IMAGE_CLASSIFICATION: image_data,
    TaskType.GRAPH_NODE_CLASSIFICATION: graph_data,
    TaskType.TEXT_CLASSIFICATION: text_data,
    TaskType.FORMULA_REGRESSION: formula_data,
    TaskType.TABULAR_CLASSIFICATION: image_data,  # a random linear teacher on the features
}


@register_loader("synthetic")
def load_synthetic(task: TaskSpec, data_root: object = None) -> TaskData:
    shape = task.synthetic
    if shape is None:
        raise DataError("task.synthetic: the synthetic dataset needs its shape (task_type, input_dims, num_outputs)")
    gen = torch.Generator().manual_seed(SYNTHETIC_SEED)
    data = SYNTHETIC_DATA[task.info.task_type](shape, task, gen)
    data.notes.append(f"synthetic {shape.task_type} data ({shape.num_examples} examples, random teacher)")
    return data


def synthetic_stand_in(task: TaskSpec, batch: int) -> TaskData:
    """Synthetic data of ``task``'s input shape and metric whose train split holds a whole
    batch of ``batch`` examples, for measuring and tracing a model without its dataset
    (``uhn bench``'s trainer, the ONNX export's example input): a graph task gets a graph of
    ``batch`` nodes, trained full-batch."""
    info = task.info
    dims = [task.max_length or SYNTHETIC_TEXT_LENGTH] if info.input_kind == "tokens" else list(info.input_dims)
    # Enough examples that the train split (what split_examples keeps: 70%) holds a whole batch.
    examples = batch if info.input_kind == "nodes" else math.ceil(batch / SYNTHETIC_TRAIN_FRACTION) + 2
    kind = info.task_type.name.lower()
    shape = SyntheticShape(task_type=kind, input_dims=dims, num_outputs=info.num_outputs, num_examples=max(8, examples))
    stand_in = TaskSpec(dataset="synthetic", synthetic=shape, vocab_size=task.vocab_size, max_length=task.max_length)
    return load_synthetic(stand_in)


def synthetic_batch(task: TaskSpec, batch: int, device: torch.device) -> Batch:
    """The first training batch of ``synthetic_stand_in(task, batch)``, on ``device``."""
    return next(iter(synthetic_stand_in(task, batch).train_batches(batch, seed=0))).to(device)


__all__ = ["GraphData", "TensorData", "load_synthetic", "split_examples", "synthetic_batch", "synthetic_stand_in"]
