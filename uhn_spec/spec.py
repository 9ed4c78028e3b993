"""The spec of one target model: its layers, task, generator and training (``ExperimentSpec``),
with the cross-layer checks (sizes chain from layer to layer) and the one-line form of a
validation error. Reading a file into a spec is ``modes.single``; the YAML and overrides under
it are ``loading``.
"""

from __future__ import annotations

import hashlib
import json
import re
import typing
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from .enums import ModelType
from .errors import SpecError
from .fields import MAX_NAME_LENGTH, SpecName, StrictModel, name_field
from .layers import REGISTRY
from .layers.base import FeatureShape, LayerSpec, parameter_counts
from .layers.embedding import EmbeddingSpec
from .layers.linear import LinearSpec
from .tasks import SyntheticShape, TaskSpec, input_shape

if TYPE_CHECKING:  # what type checkers see: every kind is a LayerSpec
    LayerUnion = LayerSpec
else:  # what pydantic validates: the registered kinds, told apart by ``kind``
    LayerUnion = Annotated[Union[tuple(REGISTRY.values())], Field(discriminator="kind")]  # noqa: UP007  runtime tuple

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
    def _heads_divide(self) -> GeneratorSpec:
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
        False, description="`uhn train` also trains the target directly (as --mode both) and reports both"
    )
    target_segments: int = Field(
        0, ge=0, description="checkpoint the target's activations in this many segments of layers (0: off)"
    )
    tensorboard: bool = Field(False, description="also write TensorBoard event files (needs uhn[tensorboard])")
    models_per_step: int = Field(
        1, ge=1, description="family runs: architectures drawn per step, their losses averaged (1: the paper's)"
    )
    tasks_per_step: int = Field(
        1,
        ge=1,
        description="multi-task runs: distinct tasks drawn per step, "
        "one AdamW step on their mean loss (1: the paper's)",
    )
    gradient_surgery: Literal["none", "pcgrad"] = Field(
        "none", description="multi-task runs with tasks_per_step >= 2: pcgrad projects conflicting task gradients"
    )

    @model_validator(mode="after")
    def _one_budget(self) -> TrainSpec:
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("train: give exactly one of epochs and steps")
        total = self.epochs if self.epochs is not None else self.steps
        if total is not None and self.warmup > total:  # total is set: exactly one is given
            raise ValueError(f"train.warmup: {self.warmup} exceeds the training length ({total})")
        if self.gradient_surgery != "none" and self.tasks_per_step < 2:
            raise ValueError(
                f"train.gradient_surgery: {self.gradient_surgery} projects the gradients of several tasks against "
                "each other; set train.tasks_per_step to 2 or more (a multi-task run), or gradient_surgery: none"
            )
        return self


class GeneratedShape(StrictModel):
    """Family ``uhn`` (a generator generated as a target: recursive generation): the
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

    name: SpecName
    description: str = ""
    family: Family
    cnn_stage_num: int = Field(0, ge=0, description="CNN stages (stem + stages); 0 for MLPs")
    task: TaskSpec
    layers: list[LayerUnion] = Field(min_length=1)
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
    def _generated_iff_uhn(self) -> ExperimentSpec:
        if (self.family == "uhn") != (self.generated is not None):
            raise ValueError("generated: give it exactly when family is uhn (a generated generator's shape)")
        if (self.family == "uhn") != self.task.dataset.startswith("recursive_"):
            raise ValueError(
                f"task.dataset: {self.task.dataset} with family {self.family}; a generated generator "
                "(family uhn) has a recursive_* dataset, and only it"
            )
        return self

    @model_validator(mode="after")
    def _layers_chain(self) -> ExperimentSpec:
        for path, message in chain_errors(self):
            raise ValueError(f"{path}: {message}")
        return self

    @model_validator(mode="after")
    def _text_fits_embedding(self) -> ExperimentSpec:
        for i, layer in enumerate(self.layers):
            if isinstance(layer, EmbeddingSpec) and (self.task.max_length or 0) > layer.max_length:
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
        """Weights of the target, counted layer by layer on the meta device (no memory)."""
        return sum(parameter_counts(self.layers))


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
    plain = (
        isinstance(first, LinearSpec)
        and first.activation.type == "none"
        and not (first.norm or first.shortcut or first.input_pooling != "none")
    )
    if not plain:
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
        return [
            (
                widths[0].origin,
                f"the structure path ends in {widths[0].features}, "
                f"the index path in {widths[1].features}; they are added",
            )
        ]
    if out.features != 1:
        return [(f"layers[{last}]", f"outputs {out.features}; a generator gives one weight per index row")]
    return []


def format_validation_error(err: ValidationError, root: type[BaseModel] | None = None) -> str:
    """The first problem of ``err`` as one line ``path: what``; an unknown field lists the
    fields allowed there, found from ``root`` (the model validated; default ExperimentSpec)."""
    errors = err.errors()
    # A misspelt field shows up as "unknown" plus "required": the unknown one names the typo.
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    path = _loc_to_path(first["loc"])
    if first["type"] == "extra_forbidden":
        allowed = _fields_at(first["loc"][:-1], root or ExperimentSpec)
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


def _fields_at(loc: tuple[Any, ...], root: type[BaseModel]) -> list[str]:
    """Field names of the model found at ``loc`` under ``root`` (for "allowed here" hints)."""
    model: type[BaseModel] | None = root
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


def spec_to_yaml(spec: ExperimentSpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


def spec_hash(spec: ExperimentSpec) -> str:
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


__all__ = [
    "MAX_NAME_LENGTH",
    "ExperimentSpec",
    "GeneratorSpec",
    "StrictModel",
    "SyntheticShape",
    "TaskSpec",
    "TrainSpec",
    "format_validation_error",
    "name_field",
    "SpecName",
    "spec_hash",
    "spec_to_yaml",
]
