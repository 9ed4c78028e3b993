"""Enumerations whose integer ids are descriptor values.

The ids are those of the authors' code, so a descriptor built here
means the same thing as one built there. YAML names are the lower-case member names.
"""

from __future__ import annotations

from enum import IntEnum


class NamedIntEnum(IntEnum):
    """An IntEnum that reads and writes its lower-case member name in specs."""

    @property
    def yaml_name(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: object) -> NamedIntEnum:
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            key = value.strip().upper()
            if key in cls.__members__:
                return cls[key]
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                pass
        choices = ", ".join(m.name.lower() for m in cls)
        raise ValueError(f"{value!r} is not one of: {choices}")


class ModelType(NamedIntEnum):
    MLP = 0  # never emitted: an MLP is described as a CNN with 0 conv stages, as the authors do
    CNN = 1
    GCN = 2
    GAT = 3
    TRANSFORMER = 4
    KAN = 5
    RECURSIVE = 6


class TaskType(NamedIntEnum):
    IMAGE_CLASSIFICATION = 0
    GRAPH_NODE_CLASSIFICATION = 1
    TEXT_CLASSIFICATION = 2
    FORMULA_REGRESSION = 3
    RECURSIVE = 4
    TABULAR_CLASSIFICATION = 5  # uhn extension: one feature vector per example, classes


class DatasetType(NamedIntEnum):
    MNIST = 0
    CIFAR10 = 1
    CITESEER = 2
    CORA = 3
    PUBMED = 4
    AG_NEWS = 5
    IMDB = 6
    ELLIPJ = 7
    ELLIPKINC = 8
    ELLIPEINC = 9
    JV = 10
    YV = 11
    KV = 12
    IV = 13
    LPMV0 = 14
    LPMV1 = 15
    LPMV2 = 16
    SPH_HARM01 = 17
    SPH_HARM11 = 18
    SPH_HARM02 = 19
    SPH_HARM12 = 20
    SPH_HARM22 = 21
    RECURSIVE_IMAGE_CLASSIFICATION = 22
    RECURSIVE_GRAPH_NODE_CLASSIFICATION = 23
    RECURSIVE_TEXT_CLASSIFICATION = 24
    RECURSIVE_FORMULA_REGRESSION = 25
    MNIST_3D = 26
    DIGITS = 27  # uhn extension: scikit-learn's bundled 8x8 digits (the embedded default)
    SYNTHETIC = 28  # uhn extension: generated data of a shape the spec chooses (tests, demos)
    WINE = 29  # uhn extension: scikit-learn's bundled wine data (13 features, 3 classes)
    BREAST_CANCER = 30  # uhn extension: scikit-learn's bundled breast-cancer data (30 features, 2 classes)


class LayerType(NamedIntEnum):
    """The authors' layer kinds. A uhn kind beyond these declares its own id (7 and up) in its
    file, as its ``layer_type``; the registry refuses two kinds with one id, and the docs'
    LayerType table is rendered from the registry (``tools/doc_tables.py``)."""

    LINEAR = 0
    CONV2D = 1
    GCN = 2
    GAT = 3
    EMBEDDING = 4
    MHA = 5
    KAN = 6


class ActivationType(NamedIntEnum):
    NONE = 0
    LEAKY_RELU = 1  # param = negative slope
    ELU = 2  # param = alpha
    SILU = 3  # param unused
    RELU = 4  # uhn extension; param unused
    GELU = 5  # uhn extension (exact erf form, as nn.GELU()); param unused
    TANH = 6  # uhn extension; param unused
    SIGMOID = 7  # uhn extension; param unused


class NormType(NamedIntEnum):
    """The local ``norm_type`` field: the authors' 0/1 flag, extended by the learned norms."""

    NONE = 0
    ACTIVATION_NORM = 1  # the parameter-free norm of linear/conv2d/gcn/gat/mha (authors')
    LAYER = 2  # uhn extension: `norm` layer, LayerNorm with learned weight and bias
    GROUP = 3  # uhn extension: `norm` layer, GroupNorm with learned weight and bias
    BATCH = 4  # uhn extension: `norm` layer, BatchNorm with learned weight, bias and running stats


class ShortcutType(NamedIntEnum):
    """The local ``shortcut_type`` field: the authors' 0/1 flag, extended by blocks."""

    NONE = 0
    STRAIGHT = 1  # identity residual around the layer (or around a `block`)
    PROJECTION = 2  # uhn extension: a `block` whose shortcut is its own (generated) layers


class InputPooling(NamedIntEnum):
    """How a Linear layer reshapes its input before the matmul (Linear only)."""

    NONE = 0
    AVG_POOLING = 1  # adaptive average to 1x1, then flatten
    MAX_POOLING = 2  # adaptive max to 1x1, then flatten
    RESHAPE_TO_2D = 3  # flatten everything but the batch dimension
    AVG_SEQUENCE = 4  # mean over the sequence dimension
    FIRST_TOKEN = 5  # x[:, 0, :]


class StagePooling(NamedIntEnum):
    """How a Conv layer downsamples (Conv only)."""

    NONE = 0
    AVG_POOLING = 1  # 2x2/2 average pool before the conv
    MAX_POOLING = 2  # 2x2/2 max pool before the conv
    CONV_POOLING = 3  # the conv itself has stride 2
    ADAPTIVE_AVG_POOLING = 4  # uhn extension: `pool` layer, adaptive average to output_size
    ADAPTIVE_MAX_POOLING = 5  # uhn extension: `pool` layer, adaptive max to output_size


class HeadConcat(NamedIntEnum):
    CONCAT = 0
    AVG = 1


class InitializationType(NamedIntEnum):
    DEFAULT = 0
    ZERO = 1  # every parameter of the layer targets mean 0, std 0
