"""The docs tables that follow from the layer registry, rendered from it (a developer script
of the checkout, not installed).

docs/descriptors.md holds each table between ``<!-- BEGIN GENERATED: NAME -->`` and
``<!-- END GENERATED: NAME -->``; ``tests/test_docs.py`` fails when the file differs from
what this renders, and ``python tools/doc_tables.py`` rewrites the file. A new layer kind
therefore needs no docs edit beyond its own section in docs/specs.md.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from uhn_spec.descriptors import LOCAL_FIELDS
from uhn_spec.files import atomic_write_text
from uhn_spec.layers import REGISTRY, LayerSpec

DESCRIPTORS_DOC = (
    Path(__file__).resolve().parent.parent / "docs" / "descriptors.md"
)  # a developer script of the checkout

LOCAL_FIELD_MEANINGS: dict[str, str] = {
    "layer_idx": "Position of the layer in the pre-order list of layers (a `block`, "
    "then its layers, then its shortcut layers).",
    "layer_type": "The kind's `layer_type` id (table [LayerType](#layertype-layer_type)).",
    "bias_type": "1 with a bias (a norm: with learned weight and bias), 0 without.",
    "norm_type": "`NormType` id: 1 the parameter-free norm of the paper's kinds, "
    "2-4 the learned norm of a `norm` layer.",
    "shortcut_type": "`ShortcutType` id: 1 an identity shortcut (around the layer, "
    "or around a `block`), 2 a block's projection shortcut.",
    "output_size": "Output features: `out_features`, `out_channels`, "
    "features per head (`gat`), `embedding_dim`, `dim`, a norm's `features`.",
    "input_size": "Input features: `in_features`, `in_channels`, `dim`, a norm's `features`; 0 for `embedding`.",
    "activation_type": "`ActivationType` id of the pre-activation (KAN: of the base branch; `activation`: its own).",
    "activation_param": "LeakyReLU slope or ELU alpha.",
    "dropout_rate": "The layer's dropout (`dropout`: its `p`).",
    "input_pooling_reshape_type": "`InputPooling` id of `input_pooling`; "
    "`flatten` records 3, a sequence `pool` 4 or 5.",
    "group_num": "GroupNorm groups (`groups`).",
    "kernel_size": "Kernel size (adaptive `pool`: its `output_size`).",
    "stage_wise_pooling_type": "`StagePooling` id of `stage_pooling`, or of an image `pool` layer's type.",
    "num_heads": "Attention heads.",
    "head_concat_type": "`HeadConcat` id: concatenated or averaged heads.",
    "embedding_num": "Vocabulary size (`num_embeddings`).",
    "max_sequence_length": "Length of the positional table (`max_length`).",
    "grid_size": "KAN grid intervals G.",
    "spline_order": "KAN B-spline order k.",
    "initialization_type": "`InitializationType` id of the layer's `init`.",
}


def sample_layer(cls: type[LayerSpec]) -> LayerSpec:
    """An instance for reading which local fields a kind sets (that does not depend on values)."""
    required = {name: 2 for name, field in cls.model_fields.items() if field.is_required()}
    return cls.model_construct(**required)


def local_fields_set_by(cls: type[LayerSpec]) -> set[str]:
    return set(sample_layer(cls).local_row(0))


def first_line(cls: type[LayerSpec]) -> str:
    return " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())


def render_local_fields() -> str:
    kinds = list(REGISTRY)
    sets = {kind: local_fields_set_by(cls) for kind, cls in REGISTRY.items()}
    lines = ["| # | field | meaning | " + " | ".join(kinds) + " |", "|---|---|---|" + "---|" * len(kinds)]
    for i, field in enumerate(LOCAL_FIELDS):
        marks = " | ".join("✓" if field in sets[kind] else "" for kind in kinds)
        lines.append(f"| {i} | `{field}` | {LOCAL_FIELD_MEANINGS[field]} | {marks} |")
    return "\n".join(lines)


def render_param_types() -> str:
    lines = ["| kind | param types |", "|---|---|"]
    for kind, cls in REGISTRY.items():
        types = ", ".join(f"{i} `{name}`" for name, i in cls.param_types.items()) or "none (no parameters)"
        lines.append(f"| `{kind}` | {types} |")
    return "\n".join(lines)


def render_layer_types() -> str:
    lines = ["| name | id | meaning |", "|---|---|---|"]
    for kind, cls in REGISTRY.items():
        origin = "" if int(cls.layer_type) <= 6 else "uhn extension: "
        lines.append(f"| `{kind}` | {int(cls.layer_type)} | {origin}{first_line(cls)} |")
    return "\n".join(lines)


TABLES = {"local-fields": render_local_fields, "param-types": render_param_types, "layer-types": render_layer_types}

BLOCK = re.compile(
    r"(<!-- BEGIN GENERATED: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(\n<!-- END GENERATED: (?P=name) -->)", re.S
)


def rendered(text: str) -> str:
    """``text`` with every generated block replaced by its fresh rendering."""
    return BLOCK.sub(lambda m: m.group(1) + TABLES[m.group("name")]() + m.group(4), text)


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else DESCRIPTORS_DOC
    text = path.read_text()
    fresh = rendered(text)
    if fresh != text:
        atomic_write_text(path, fresh)
        print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
