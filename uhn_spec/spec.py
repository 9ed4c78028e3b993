"""The spec language: a YAML file describing target model, task, generator and training.

``load_spec`` reads a file (rendered as a sandboxed jinja2 template first, so model families
can loop over layers), parses it as YAML (duplicate keys refused), applies ``--set PATH=VALUE``
overrides and validates everything, including the cross-layer checks (sizes chain from layer
to layer) and that every number is finite and fits 64 bits. Every error names its YAML path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from .enums import ModelType, TaskType
from .errors import SpecError
from .layers import REGISTRY
from .layers.base import FeatureShape
from .tasks import DATASETS, DatasetInfo, DatasetName, input_shape, synthetic_info
from .template import read_spec_file, render_spec_template

LayerUnion = Annotated[Union[tuple(REGISTRY.values())], Field(discriminator="kind")]  # type: ignore[valid-type]

Family = Literal["mlp", "cnn", "gcn", "gat", "transformer", "kan", "uhn"]

# The MLP is described as a CNN with 0 conv stages, as in the authors' code (ModelType.MLP
# is never emitted), so an MLP descriptor means the same thing there and here.
FAMILY_MODEL_TYPE: dict[str, ModelType] = {
    "mlp": ModelType.CNN,
    "cnn": ModelType.CNN,
    "gcn": ModelType.GCN,
    "gat": ModelType.GAT,
    "transformer": ModelType.TRANSFORMER,
    "kan": ModelType.KAN,
    "uhn": ModelType.RECURSIVE,  # a generated generator (recursive generation)
}


# A spec's name names its default run folder (runs/<name>/...) and files: one path component
# of portable characters, never "." or "..", hidden, or longer than any file system takes.
MAX_NAME_LENGTH = 100
NAME_CHARACTERS = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
NAME_RULE = "letters, digits, '_', '.' and '-', starting with a letter or digit"


def name_field(max_length: int = MAX_NAME_LENGTH, why: str = "it names the run folder", letter_first: bool = False) -> Any:
    """The type of a ``name`` field: a str of at most ``max_length`` characters of NAME_RULE
    (shorter where uhn appends to it, as a family's members ``<name>_0000``; ``letter_first``
    where the name goes through YAML again, where ``1_0000`` would read as a number)."""
    rule = NAME_RULE.replace("letter or digit", "letter") if letter_first else NAME_RULE

    def check(name: str) -> str:
        if NAME_CHARACTERS.fullmatch(name) and len(name) <= max_length and (name[0].isalpha() or not letter_first):
            return name
        shown = repr(name) if len(name) <= 40 else f"{name[:40]!r}... ({len(name)} characters)"
        raise ValueError(f"must be 1 to {max_length} {rule}; {why} (got {shown})")

    return Annotated[str, AfterValidator(check)]


SpecName = name_field()


class StrictModel(BaseModel):
    # allow_inf_nan: "inf" or "nan" given as strings are refused too (check_numbers sees floats).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


SyntheticTaskType = Literal[
    "image_classification",
    "graph_node_classification",
    "text_classification",
    "formula_regression",
    "tabular_classification",
]


class SyntheticShape(StrictModel):
    """Shape of a ``synthetic`` dataset: generated inputs and a random teacher's labels."""

    task_type: SyntheticTaskType
    input_dims: list[int] = Field(min_length=1, max_length=3, description="image: [C, H, W]; other: [F]")
    num_outputs: int = Field(ge=1)
    num_examples: int = Field(512, ge=8)

    @model_validator(mode="after")
    def _dims_fit(self) -> "SyntheticShape":
        if any(d < 1 for d in self.input_dims):
            raise ValueError(f"task.synthetic.input_dims: {self.input_dims} must be positive")
        want = 3 if self.task_type == "image_classification" else 1
        if len(self.input_dims) != want:
            raise ValueError(
                f"task.synthetic.input_dims: {self.task_type} needs {want} dims, got {self.input_dims}"
            )
        return self


class TaskSpec(StrictModel):
    """Which dataset the target model solves; task type and outputs follow from it."""

    dataset: DatasetName
    vocab_size: int = Field(5000, ge=4, description="text tasks: vocabulary incl. <unk>, <pad>, <cls>")
    synthetic: SyntheticShape | None = Field(None, description="shape of the synthetic dataset")
    max_length: int | None = Field(
        None,
        ge=2,
        description="text tasks: tokens per example incl. <cls> (default: the embedding's max_length, else 512)",
    )
    validate_split: bool = Field(
        False,
        description="hold out a validation split of the training data and train on the rest "
        "(the authors' --validate); off: train on all of it, as the paper's results do",
    )
    resize: list[int] | None = Field(
        None,
        min_length=2,
        max_length=2,
        description="image tasks: resize every image to [H, W] (bilinear, antialiased) before the model",
    )
    stands_in_for: DatasetName | None = Field(
        None,
        description="the dataset this run reports for because it is missing here (citeseer for "
        "pubmed); the run states it in its notes",
    )

    @model_validator(mode="after")
    def _synthetic_shape(self) -> "TaskSpec":
        if (self.dataset == "synthetic") != (self.synthetic is not None):
            raise ValueError(
                "task.synthetic: give it exactly when task.dataset is synthetic "
                "(it sets the generated data's task_type, input_dims and num_outputs)"
            )
        if self.resize is not None:
            if any(size < 1 for size in self.resize):
                raise ValueError(f"task.resize: {self.resize} must be two positive sizes [H, W]")
            if self.info.input_kind != "image":
                raise ValueError(f"task.resize: {self.dataset} is not an image task; remove the field")
        if self.stands_in_for == self.dataset:
            raise ValueError(f"task.stands_in_for: {self.dataset} cannot stand in for itself; remove the field")
        return self

    @property
    def info(self) -> DatasetInfo:
        if self.synthetic is not None:
            s = self.synthetic
            info = synthetic_info(TaskType[s.task_type.upper()], tuple(s.input_dims), s.num_outputs)
        else:
            info = DATASETS[self.dataset]
        if self.resize is not None and info.input_kind == "image":
            info = dataclasses.replace(info, input_dims=(info.input_dims[0], *self.resize))
        return info


class GeneratorSpec(StrictModel):
    """The UHN generator. Defaults are the paper's large single-model config."""

    index_freqs: int = Field(2048, ge=1, description="F_v: Fourier frequencies of the index encoder")
    sigma: float = Field(100.0, gt=0, description="std of the Fourier matrices B")
    index_width_cap: int | None = Field(
        None,
        ge=1,
        description="beyond the paper: normalise every index field as if its range spanned at most this many "
        "integers, so that neighbouring indices of a wide field (a 5,000-token vocabulary) stay as far apart in "
        "Fourier phase as in a narrow one (null: the paper's range normalisation)",
    )
    hidden: int = Field(128, ge=1, description="d: width of the index MLP")
    blocks: int = Field(2, ge=0, description="N_blk: pre-activation residual blocks")
    structure_encoder: bool = Field(False, description="add the task-structure encoder")
    structure_freqs: int = Field(32, ge=1, description="F_u: Fourier frequencies of the structure encoder")
    structure_heads: int = Field(4, ge=1, description="h: attention heads of the structure encoder")
    chunk_rows: int = Field(32768, ge=1, description="index rows generated per chunk (memory/speed)")

    @model_validator(mode="after")
    def _heads_divide(self) -> "GeneratorSpec":
        if self.structure_encoder and (2 * self.structure_freqs) % self.structure_heads:
            raise ValueError(
                f"generator.structure_heads: {self.structure_heads} does not divide the "
                f"structure width 2*structure_freqs = {2 * self.structure_freqs}"
            )
        return self


# The largest learning rate a spec accepts (lr, init_lr, direct_lr): a larger one is a typo.
MAX_LR = 1.0


class TrainSpec(StrictModel):
    """Training schedule. Exactly one of ``epochs`` and ``steps``; ``warmup`` is in the
    same unit."""

    epochs: int | None = Field(None, ge=1)
    steps: int | None = Field(None, ge=1)
    warmup: int = Field(5, ge=0)
    lr: float = Field(1e-4, gt=0, le=MAX_LR)
    init_steps: int = Field(0, ge=0, description="steps of the init (statistics-matching) phase")
    init_lr: float = Field(1e-4, gt=0, le=MAX_LR)
    batch_size: int = Field(256, ge=1)
    seed: int = Field(0, ge=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    grad_clip: float | None = Field(None, gt=0)
    level_change_bound: float | None = Field(
        None,
        gt=0,
        le=1.0,
        description="UHN runs (beyond the paper): shorten every optimiser step until no generated level's "
        "weights (each H_k of a recursive chain, and the target) change by more than this fraction of their "
        "norm; null: the paper's plain step",
    )
    level_norm: Literal["none", "standardize", "standardize_centered"] = Field(
        "none",
        description="recursive runs: `none` (the paper's); `standardize` (beyond the paper): every tensor of each "
        "generated generator H_k with an init spread is re-normalised to its init mean and std at every forward; "
        "`standardize_centered`: also every other tensor (zero-initialised, or of one element) is shifted to its "
        "init mean (a one-element tensor, such as a generator's head bias, is held at its init value)",
    )
    target_norm: Literal["none", "standardize", "standardize_centered"] = Field(
        "none",
        description="UHN runs (beyond the paper): `standardize`: every generated tensor of the target with an init "
        "spread is re-normalised to its init mean and std at every forward (a weight-norm-like reparametrisation: "
        "step 0 then has the statistics of PyTorch's init, whatever the generator's raw output scale); "
        "`standardize_centered`: also every other tensor is shifted to its init mean; `none`: the paper's",
    )
    init_deep_levels: Literal["train", "calibrate"] = Field(
        "train",
        description="recursive runs: `train` (the paper's): every level of the chain gets its init stage; "
        "`calibrate` (beyond the paper): H1's stage takes all init_steps and each level below it is only "
        "calibrated to its init statistics",
    )
    direct_lr: float | None = Field(None, gt=0, le=MAX_LR, description="lr of the direct baseline (default: lr)")
    eval_every: int | None = Field(None, ge=1, description="evaluate every this many epochs/steps")
    compare_direct: bool = Field(
        False,
        description="`uhn train` also trains the target directly (as --mode both) and reports both",
    )
    target_segments: int = Field(
        0, ge=0, description="checkpoint the target's activations in this many segments of layers (0: off)"
    )
    tensorboard: bool = Field(False, description="also write TensorBoard event files (needs uhn[tensorboard])")
    models_per_step: int = Field(
        1, ge=1, description="family runs: architectures drawn per step, their losses averaged (1: the paper's)"
    )
    tasks_per_step: int = Field(
        1, ge=1, description="multi-task runs: distinct tasks drawn per step, one AdamW step on their mean loss (1: the paper's)"
    )
    gradient_surgery: Literal["none", "pcgrad"] = Field(
        "none", description="multi-task runs with tasks_per_step >= 2: pcgrad projects conflicting task gradients"
    )

    @model_validator(mode="after")
    def _one_budget(self) -> "TrainSpec":
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("train: give exactly one of epochs and steps")
        total = self.epochs if self.epochs is not None else self.steps
        if self.warmup > total:  # type: ignore[operator]
            raise ValueError(f"train.warmup: {self.warmup} exceeds the training length ({total})")
        if self.gradient_surgery != "none" and self.tasks_per_step < 2:
            raise ValueError(
                f"train.gradient_surgery: {self.gradient_surgery} projects the gradients of several tasks against "
                "each other; set train.tasks_per_step to 2 or more (a multi-task run), or gradient_surgery: none"
            )
        return self


class GeneratedShape(StrictModel):
    """Family ``uhn`` (a generator generated as a target, reference-facts section 11): the
    Fourier encoders it reuses from the root generator and where its index path starts.
    Layers ``[0, structure_layers)`` read the structure features (L, 2 x structure_freqs) and
    end in one vector of width d; layer ``structure_layers`` is the input Linear over the
    index features (2 x index_freqs -> d), then the hidden layers; the last layer reads
    their sum with the structure vector and gives one weight per index row."""

    structure_freqs: int = Field(ge=1, description="F_u of the reused structure encoder")
    index_freqs: int = Field(ge=1, description="F_v of the reused index encoder")
    structure_layers: int = Field(ge=1, description="layers of the structure path")


class ExperimentSpec(StrictModel):
    """One target model on one task, with the generator that produces it and its training."""

    name: SpecName  # type: ignore[valid-type]
    description: str = ""
    family: Family
    cnn_stage_num: int = Field(0, ge=0, description="CNN stages (stem + stages); 0 for MLPs")
    task: TaskSpec
    layers: list[LayerUnion] = Field(min_length=1)  # type: ignore[valid-type]
    generated: GeneratedShape | None = Field(None, description="family uhn only: the generated generator's shape")
    generator: GeneratorSpec = GeneratorSpec()
    train: TrainSpec = TrainSpec(epochs=1, warmup=0)

    @model_validator(mode="before")
    @classmethod
    def _text_length_from_embedding(cls, data: Any) -> Any:
        """A text task's sequence length defaults to the embedding's positional table, so a
        spec states it once (the data loader sees only ``task``)."""
        if not isinstance(data, dict) or not isinstance(data.get("layers"), list):
            return data  # not a mapping or no layer list: field validation reports it
        task = data.get("task")
        embeddings = [layer for layer in data["layers"] if _layer_kind(layer) == "embedding"]
        length = _layer_field(embeddings[0], "max_length") if embeddings else None
        if not isinstance(length, int):
            return data
        if isinstance(task, dict) and task.get("max_length") is None:
            return {**data, "task": {**task, "max_length": length}}
        if isinstance(task, TaskSpec) and task.max_length is None:
            return {**data, "task": task.model_copy(update={"max_length": length})}
        return data

    @model_validator(mode="after")
    def _generated_iff_uhn(self) -> "ExperimentSpec":
        if (self.family == "uhn") != (self.generated is not None):
            raise ValueError("generated: give it exactly when family is uhn (a generated generator's shape)")
        if (self.family == "uhn") != self.task.dataset.startswith("recursive_"):
            raise ValueError(
                f"task.dataset: {self.task.dataset} with family {self.family}; a generated generator "
                "(family uhn) has a recursive_* dataset, and only it"
            )
        return self

    @model_validator(mode="after")
    def _layers_chain(self) -> "ExperimentSpec":
        for path, message in chain_errors(self):
            raise ValueError(f"{path}: {message}")
        return self

    @model_validator(mode="after")
    def _text_fits_embedding(self) -> "ExperimentSpec":
        for i, layer in enumerate(self.layers):
            if layer.kind == "embedding" and (self.task.max_length or 0) > layer.max_length:
                raise ValueError(
                    f"task.max_length: {self.task.max_length} exceeds layers[{i}].max_length "
                    f"({layer.max_length}), the longest sequence the positional table holds"
                )
        return self

    @property
    def model_type(self) -> ModelType:
        return FAMILY_MODEL_TYPE[self.family]

    @property
    def flat_layers(self) -> list[tuple[str, Any]]:
        """Every layer, nested ones (in blocks) included, in pre-order, with its module path
        (``layers.3.layers.0``): one local descriptor row and ``layer_idx`` each. Without
        blocks this is ``layers`` itself."""
        return [item for i, layer in enumerate(self.layers) for item in layer.flat_layers(f"layers.{i}")]

    @property
    def num_encoders(self) -> int:
        return sum(1 for _, layer in self.flat_layers if layer.kind == "mha")

    @property
    def num_params(self) -> int:
        from .model import build_model  # local: keeps torch module building off the import path

        return sum(p.numel() for p in build_model(self, device="meta").parameters())


def _layer_kind(layer: Any) -> Any:
    return layer.get("kind") if isinstance(layer, dict) else getattr(layer, "kind", None)


def _layer_field(layer: Any, name: str) -> Any:
    return layer.get(name) if isinstance(layer, dict) else getattr(layer, name, None)


def chain_errors(spec: ExperimentSpec) -> list[tuple[str, str]]:
    """Walk the layers, checking that each reads what the previous one produces."""
    if spec.generated is not None:
        return uhn_chain_errors(spec, spec.generated)
    shape: FeatureShape = input_shape(spec.task.info, spec.task.vocab_size)
    for i, layer in enumerate(spec.layers):
        try:
            shape = layer.output_shape(shape, f"layers[{i}]")
        except SpecError as err:
            return [(err.path, err.message)]
    want = spec.task.info.num_outputs
    last = f"layers[{len(spec.layers) - 1}]"
    if shape.kind not in ("vector", "nodes"):
        return [(last, f"the model must end in one vector per example, got {shape.describe()}")]
    if shape.features != want:
        return [(f"{last}", f"outputs {shape.features} but task {spec.task.dataset} needs {want}")]
    return []


def uhn_chain_errors(spec: ExperimentSpec, shape: GeneratedShape) -> list[tuple[str, str]]:
    """A generated generator's two paths (``GeneratedShape``): the structure path ends in a
    vector of width d, the index path starts with a plain Linear over the index features
    (the fast path factors exactly that layer) and ends in width d, the head gives 1."""
    split = shape.structure_layers
    if not 0 < split < len(spec.layers) - 1:
        return [("generated.structure_layers", f"{split} leaves no index path in {len(spec.layers)} layers")]
    first = spec.layers[split]
    where = f"layers[{split}]"
    plain = first.kind == "linear" and first.activation.type == "none" and not (first.norm or first.shortcut)
    if not plain or first.input_pooling != "none":
        return [(where, "the index path starts with a plain linear (no activation, norm, shortcut or pooling)")]
    paths = (
        (range(split), FeatureShape("sequence", (1, 2 * shape.structure_freqs), "the structure features")),
        (range(split, len(spec.layers) - 1), FeatureShape("vector", (2 * shape.index_freqs,), "the index features")),
    )
    widths = []
    try:
        for layers, current in paths:
            for i in layers:
                current = spec.layers[i].output_shape(current, f"layers[{i}]")
            if current.kind != "vector":
                return [(f"layers[{layers[-1]}]", f"a path must end in one vector, got {current.describe()}")]
            widths.append(current)
        last = len(spec.layers) - 1
        out = spec.layers[last].output_shape(widths[1], f"layers[{last}]")
    except SpecError as err:
        return [(err.path, err.message)]
    if widths[0].features != widths[1].features:
        return [(widths[0].origin, f"the structure path ends in {widths[0].features}, the index path in {widths[1].features}; they are added")]
    if out.features != 1:
        return [(f"layers[{last}]", f"outputs {out.features}; a generator gives one weight per index row")]
    return []


# --------------------------------------------------------------------------- loading


def format_validation_error(err: ValidationError) -> str:
    errors = err.errors()
    # A misspelt field shows up as "unknown" plus "required": the unknown one names the typo.
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    path = _loc_to_path(first["loc"])
    if first["type"] == "extra_forbidden":
        allowed = _fields_at(first["loc"][:-1])
        hint = f"; allowed here: {', '.join(allowed)}" if allowed else ""
        return f"{path}: unknown field{hint}"
    if first["type"] in ("union_tag_invalid", "union_tag_not_found"):
        tag = first.get("ctx", {}).get("tag")
        what = f"{tag!r} is not a layer kind" if tag is not None else "missing"
        return f"{path}.kind: {what}; use one of: {', '.join(REGISTRY)}"
    if first["type"] == "finite_number":
        return f"{path}: {first.get('input')!r} is not finite; give a finite number"
    message = first["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    if first["type"] in ("value_error", "assertion_error") and re.match(r"^[\w\[\]\.]+: ", message):
        return message  # cross-field errors already carry their own path
    got = first.get("input")
    already_shown = "(got " in message  # a validator's own message may name the value
    shown = "" if isinstance(got, (dict, list)) or got is None or already_shown else f" (got {got!r})"
    return f"{path}: {message}{shown}" if path else f"{message}{shown}"


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    previous: Any = None
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif isinstance(previous, int) and item in REGISTRY:
            pass  # discriminated-union tag: layers[3].linear.x -> layers[3].x
        else:
            parts.append(("." if parts else "") + str(item))
        previous = item
    return "".join(parts)


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the spec model found at ``loc`` (for "allowed here" hints)."""
    model: type[BaseModel] | None = ExperimentSpec
    previous: Any = None
    for item in loc:
        if isinstance(item, int):
            pass  # a list item: the model is chosen by the next (tag) or stays
        elif isinstance(previous, int) and item in REGISTRY:
            model = REGISTRY[item]
        else:
            field = model.model_fields.get(item) if model else None
            annotation = field.annotation if field else None
            candidates = (annotation, *typing.get_args(annotation))
            model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        previous = item
    return list(model.model_fields) if model else []


INT64_MAX = 2**63 - 1
# Values a YAML document may expand to (aliases repeat a node without copying it): specs
# hold hundreds; a billion-laughs document would hold billions.
MAX_YAML_NODES = 1_000_000


class CheckedConstruction:
    """Refuses duplicate keys (naming the key and both lines), recursive aliases and
    documents that alias-expand into more than MAX_YAML_NODES values, before constructing
    anything."""

    def construct_document(self, node: yaml.Node) -> Any:
        check_yaml_nodes(node)
        return super().construct_document(node)  # type: ignore[misc]


class SpecLoader(CheckedConstruction, yaml.SafeLoader):
    """The pure-Python safe loader: its error messages are the ones the docs quote."""


class FastSpecLoader(CheckedConstruction, getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """libyaml's safe loader where PyYAML has it, several times faster (a family file renders
    and reads hundreds of member specs)."""


# Where a node sits: (where its parent sits, its key or index), None for the root. Built as a
# chain so that walking a deep document costs no path string per node.
NodePlace = Union[tuple["NodePlace", str], None]


def yaml_path(place: NodePlace) -> str:
    parts: list[str] = []
    while place is not None:
        place, part = place
        parts.append(part)
    return "".join(reversed(parts)).lstrip(".")


def check_yaml_nodes(root: yaml.Node) -> None:
    """Walk the node graph depth first: count the values it expands to, refuse a node that
    contains itself (``a: &a [*a]`` would expand forever) and duplicate keys."""
    count = 0
    open_nodes: set[int] = set()  # the collections on the way down to the current node
    stack: list[tuple[yaml.Node, NodePlace, bool]] = [(root, None, False)]
    while stack:
        node, place, leaving = stack.pop()
        if leaving:
            open_nodes.discard(id(node))
            continue
        count += 1
        if count > MAX_YAML_NODES:
            raise SpecError(yaml_path(place), f"the document expands to more than {MAX_YAML_NODES} values (YAML aliases?)")
        if not isinstance(node, yaml.CollectionNode):
            continue
        if id(node) in open_nodes:
            line = node.start_mark.line + 1
            raise SpecError(yaml_path(place), f"a YAML alias refers to the node (line {line}) that contains it; it would never end")
        open_nodes.add(id(node))
        stack.append((node, place, True))
        if isinstance(node, yaml.MappingNode):
            stack.extend(reversed(mapping_children(node, place)))
        else:
            stack.extend((item, (place, f"[{i}]"), False) for i, item in reversed(list(enumerate(node.value))))


def mapping_children(node: yaml.MappingNode, place: NodePlace) -> list[tuple[yaml.Node, NodePlace, bool]]:
    """The values of a mapping with their places; a key given twice is refused."""
    children: list[tuple[yaml.Node, NodePlace, bool]] = []
    seen: dict[Any, int] = {}
    for key, value in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            children.append((value, place, False))
            continue
        child: NodePlace = (place, f".{key.value}")
        line = key.start_mark.line + 1
        if (key.tag, key.value) in seen:
            first = seen[(key.tag, key.value)]
            raise SpecError(yaml_path(child), f"duplicate key at lines {first} and {line}; keep one of them")
        seen[(key.tag, key.value)] = line
        children.append((value, child, False))
    return children


def parse_yaml(text: str) -> Any:
    """Parse spec YAML safely; raise SpecError(location, ...) on any YAML error."""
    try:
        return yaml.load(text, Loader=FastSpecLoader)  # noqa: S506 - a SafeLoader
    except (yaml.YAMLError, RecursionError):
        pass  # parse again below, for the pure-Python loader's message
    try:
        return yaml.load(text, Loader=SpecLoader)  # noqa: S506 - a SafeLoader
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        at = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = err.problem or str(err).splitlines()[0]
        raise SpecError(at, f"invalid YAML: {problem}") from None
    except yaml.reader.ReaderError as err:
        raise SpecError(f"character {err.position}", f"invalid YAML: {str(err).splitlines()[0]}") from None
    except yaml.YAMLError as err:
        raise SpecError("", f"invalid YAML: {str(err).splitlines()[0]}") from None
    except RecursionError:
        raise SpecError("", "invalid YAML: nested too deeply") from None


def check_numbers(data: Any, path: str = "") -> None:
    """Every float is finite and every integer fits 64 bits (torch's index type)."""
    stack: list[tuple[Any, str]] = [(data, path)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise SpecError(where, f"{value} is not finite; give a finite number")
        if isinstance(value, int) and abs(value) > INT64_MAX:
            raise SpecError(where, f"{value} does not fit a 64-bit integer (at most {INT64_MAX})")
        if isinstance(value, dict):
            stack.extend((v, f"{where}.{k}" if where else str(k)) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(value))


def parse_override(item: str) -> tuple[list[str | int], Any]:
    """``train.lr=1e-4`` or ``layers[2].dropout=0.1`` -> (path parts, YAML-parsed value)."""
    if "=" not in item:
        raise SpecError("--set", f"{item!r} is not PATH=VALUE (e.g. train.epochs=3)")
    path, raw = item.split("=", 1)
    parts: list[str | int] = []
    for token in re.findall(r"[^.\[\]]+|\[\d+\]", path.strip()):
        parts.append(int(token[1:-1]) if token.startswith("[") else token)
    if not parts:
        raise SpecError("--set", f"{item!r} has an empty path")
    if not raw.strip():
        return parts, ""
    try:
        return parts, parse_yaml(raw)
    except SpecError as err:
        raise SpecError("--set", f"{item!r}: the value is not valid YAML ({err.message.removeprefix('invalid YAML: ')}); quote a string value") from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        parts, value = parse_override(item)
        node: Any = data
        for depth, key in enumerate(parts[:-1]):
            nxt = parts[depth + 1]
            try:
                if isinstance(node, dict) and key not in node:
                    node[key] = [] if isinstance(nxt, int) else {}
                node = node[key]
            except (KeyError, IndexError, TypeError):
                raise SpecError("--set", f"{item!r}: no such path in the spec") from None
        last = parts[-1]
        try:
            node[last] = value
        except (IndexError, TypeError):
            raise SpecError("--set", f"{item!r}: no such path in the spec") from None
    return data


def load_yaml(text: str, where: str | None = None) -> Any:
    """``parse_yaml`` with its error placed in file ``where``."""
    try:
        return parse_yaml(text)
    except SpecError as err:
        raise SpecError(err.path, err.message, where) from None


def has_top_level_key(path: str | Path, keys: Sequence[str]) -> bool:
    """Whether ``path`` is a plain YAML mapping with one of ``keys`` at its top level: how a
    family, multi-task or recursive file is told from an ordinary spec (a jinja2 template,
    which need not parse as YAML before rendering). An unreadable file is none of them:
    ``load_spec`` then reports it."""
    try:
        data = load_yaml(read_spec_text(Path(path)))
    except SpecError:
        return False
    return isinstance(data, dict) and any(key in data for key in keys)


def spec_from_text(
    text: str,
    source: Path | None = None,
    overrides: list[str] | None = None,
    variables: dict[str, Any] | None = None,
) -> ExperimentSpec:
    where = str(source) if source else None
    try:
        data = parse_yaml(render_spec_template(text, source, variables))
        if not isinstance(data, dict):
            what = "empty" if data is None else f"a YAML {type(data).__name__}"
            raise SpecError("", f"the spec is {what}; a spec is a YAML mapping with name, family, task and layers")
        data = apply_overrides(data, list(overrides or []))
        check_numbers(data)
        return ExperimentSpec.model_validate(data)
    except SpecError as err:
        raise SpecError(err.path, err.message, where) from None
    except ValidationError as err:
        raise SpecError("", format_validation_error(err), where) from None


def read_spec_text(path: Path) -> str:
    """A spec file's text: UTF-8 (a BOM is fine), at most MAX_RENDERED_CHARS bytes of a
    regular file (``read_spec_file``)."""
    return read_spec_file(Path(path))


def load_spec(
    path: str | Path,
    overrides: list[str] | None = None,
    variables: dict[str, Any] | None = None,
) -> ExperimentSpec:
    path = Path(path)
    return spec_from_text(read_spec_text(path), path, overrides, variables)


def spec_to_yaml(spec: ExperimentSpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


def spec_hash(spec: ExperimentSpec) -> str:
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


__all__ = [
    "ExperimentSpec",
    "GeneratorSpec",
    "TaskSpec",
    "TrainSpec",
    "load_spec",
    "parse_yaml",
    "read_spec_text",
    "spec_from_text",
    "spec_to_yaml",
    "spec_hash",
]
