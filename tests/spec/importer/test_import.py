"""`uhn import`: stock modules become specs with their exact parameter count, and weights
from the spec load back into the original class (strict) with identical outputs."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from tests.import_models import models
from tests.import_models.models import (
    GAT,
    GCN,
    DataDependent,
    TextTransformer,
    pre_ln_transformer,
    tiny_gat,
    tiny_resnet,
)
from uhn_spec import ExperimentSpec, build_model, compile_spec
from uhn_spec.errors import UHNError
from uhn_spec.importer import import_model, load_module_ref, module_state_dict

CASES = [
    (tiny_resnet, {"input_shape": (3, 8, 8)}),
    (TextTransformer, {"input_shape": (7,)}),
    (pre_ln_transformer, {"input_shape": (5,)}),
    (lambda: GCN(features=3703, hidden=8), {"graph": "citeseer"}),
    (lambda: GAT(features=3703, hidden=4, heads=3), {"graph": "citeseer"}),
]


def small_run_overrides(examples: int) -> list[str]:
    """``--set`` flags that make an imported spec's run a few seconds long."""
    fields = ("train.epochs=null", "train.steps=3", "train.warmup=0", "train.batch_size=16")
    fields += ("generator.index_freqs=16", "generator.hidden=8", f"task.synthetic.num_examples={examples}")
    return [flag for field in fields for flag in ("--set", field)]


def example(kwargs: dict, spec: ExperimentSpec) -> tuple[tuple, dict]:
    gen = torch.Generator().manual_seed(3)
    if "graph" in kwargs:
        x, edges = torch.randn(10, 3703, generator=gen), torch.randint(0, 10, (2, 30), generator=gen)
        edges = edges[:, edges[0] != edges[1]]  # PyG's GATConv/GCNConv see no self-loops twice
        return (x, edges), {"x": x, "edge_index": edges}
    shape = kwargs["input_shape"]
    if len(shape) == 1:
        tokens = torch.randint(0, spec.task.vocab_size, (3, shape[0]), generator=gen)
        return (tokens,), {"x": tokens}
    x = torch.randn(4, *shape, generator=gen)
    return (x,), {"x": x}


@pytest.mark.parametrize(
    ("factory", "kwargs"), CASES, ids=["resnet", "post_ln_transformer", "pre_ln_transformer", "gcn", "gat"]
)
def test_import_round_trips_weights_into_the_original_module(factory, kwargs: dict) -> None:
    torch.manual_seed(0)
    module = factory().eval()
    imported = import_model(module, **kwargs)
    spec = ExperimentSpec.model_validate(imported.spec)
    assert spec.num_params == imported.num_params == sum(p.numel() for p in module.parameters())

    # Weights as a generator gives them: one flat vector, sliced by the plan.
    target = compile_spec(spec).targets[0]
    flat = torch.randn(target.num_params, generator=torch.Generator().manual_seed(1)) * 0.3
    params = {p.name: flat[p.offset : p.offset + p.numel].view(p.shape) for p in target.params}
    skeleton = build_model(spec).eval()
    for name, buffer in skeleton.named_buffers():  # running statistics: not the defaults
        if name.endswith("running_var"):
            buffer.uniform_(0.5, 2.0)
        elif name.endswith("running_mean"):
            buffer.normal_()
    spec_state = {**dict(skeleton.named_buffers()), **params}

    module.load_state_dict(module_state_dict(imported, spec_state), strict=True)
    args, inputs = example(kwargs, spec)
    with torch.no_grad():
        ours = functional_call(skeleton, params, args=(), kwargs=inputs)
        theirs = module(*args)
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-4), float((ours - theirs).abs().max())


def test_what_torch_export_cannot_capture_is_one_line_naming_the_class_and_the_code() -> None:
    with pytest.raises(UHNError) as err:
        import_model(DataDependent(), input_shape=(4,))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("DataDependent at ") and "models.py" in message
    assert "torch.export cannot capture it" in message


@pytest.mark.parametrize("attr", ["DataDependent", "GATNeedsArguments"])
def test_cli_refusal_is_one_error_line_and_exit_2(tmp_path, attr: str) -> None:
    from typer.testing import CliRunner

    from uhn_cli.main import app

    result = CliRunner().invoke(
        app, ["import", f"{models.__file__}:{attr}", "--input-shape", "4", "-o", str(tmp_path / "s.yaml")]
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output
    assert not (tmp_path / "s.yaml").exists()


def test_a_class_that_needs_arguments_says_so() -> None:
    with pytest.raises(UHNError) as err:
        load_module_ref(f"{models.__file__}:GATNeedsArguments")
    assert str(err.value).endswith(
        "GATNeedsArguments needs arguments (features); give a zero-argument factory, "
        "e.g. def make(): return GATNeedsArguments(...), and import FILE:make"
    )


def test_graph_models_become_their_paper_kinds() -> None:
    layer = import_model(tiny_gat(), graph="synthetic", input_shape=(12,)).spec["layers"][0]
    assert [part["layer"]["kind"] for part in layer["parts"]] == ["gat", "gat"]
    assert [part["layer"]["dropout"] for part in layer["parts"]] == [0.6, 0.6]


def test_module_refs_by_file_and_by_dotted_path() -> None:
    by_file = load_module_ref(f"{models.__file__}:tiny_resnet")
    by_path = load_module_ref("tests.import_models.models:tiny_resnet")
    assert sum(p.numel() for p in by_file.parameters()) == sum(p.numel() for p in by_path.parameters()) == 1391
    with pytest.raises(UHNError, match="has no attribute"):
        load_module_ref("tests.import_models.models:nothing")


def test_import_train_export_for_module_cli(tmp_path) -> None:
    """The user's path: import a module, train its spec a few steps, export the generated
    weights (BatchNorm recalibrated) into the original class, with the spec model's outputs."""
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from uhn_cli.main import app
    from uhn_runtime.io.export import load_exported

    runner = CliRunner()
    ref = f"{models.__file__}:tiny_resnet"
    spec_path, run, out = tmp_path / "resnet.yaml", tmp_path / "run", tmp_path / "module.safetensors"
    result = runner.invoke(app, ["import", ref, "--input-shape", "3,8,8", "-o", str(spec_path)])
    assert result.exit_code == 0, result.output
    small = small_run_overrides(64)
    result = runner.invoke(app, ["train", str(spec_path), "-o", str(run), "--mode", "uhn", "--device", "cpu", *small])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["export", str(run), "-o", str(out), "--for-module", ref, "--recalibrate-bn", "2"])
    assert result.exit_code == 0, result.output
    plain = tmp_path / "plain.safetensors"
    assert runner.invoke(app, ["export", str(run), "-o", str(plain), "--recalibrate-bn", "2"]).exit_code == 0

    module = tiny_resnet().eval()
    module.load_state_dict(load_file(str(out)), strict=True)
    assert int(module.bn1.num_batches_tracked) == 2  # recalibrated over 2 batches, not the defaults
    assert not torch.equal(module.bn1.running_var, torch.ones_like(module.bn1.running_var))
    _, spec_model = load_exported(plain)
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(module(x), spec_model.eval()(x), atol=1e-5, rtol=1e-4)

    wrong = runner.invoke(
        app,
        [
            "export",
            str(run),
            "-o",
            str(tmp_path / "w.safetensors"),
            "--for-module",
            f"{models.__file__}:wider_tiny_resnet",
        ],
    )
    assert wrong.exit_code == 2 and "does not match the run's spec" in wrong.output


def graph_inputs() -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(4)
    x, edges = torch.randn(9, 12, generator=gen), torch.randint(0, 9, (2, 24), generator=gen)
    return x, edges[:, edges[0] != edges[1]]


# The other targets of the issue through the same path: (factory, import flags, model inputs).
CLI_CASES = {
    "gat": ("tiny_gat", ["--graph", "synthetic", "--input-shape", "12"], graph_inputs),
    "gcn": ("tiny_gcn", ["--graph", "synthetic", "--input-shape", "12"], graph_inputs),
    "transformer": (
        "TextTransformer",
        ["--input-shape", "7"],
        lambda: (torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(4)),),
    ),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_import_train_export_for_module_cli_graph_and_text(tmp_path, case: str) -> None:
    """PyG GAT and GCN on a synthetic graph, a TransformerEncoder on synthetic text, through the
    user's path: import, train a few steps, export into the original class (strict), with the
    spec model's outputs."""
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from uhn_cli.main import app
    from uhn_runtime.io.export import load_exported

    attr, flags, inputs = CLI_CASES[case]
    factory = getattr(models, attr)
    runner = CliRunner()
    ref = f"{models.__file__}:{attr}"
    spec_path, run = tmp_path / "spec.yaml", tmp_path / "run"
    result = runner.invoke(app, ["import", ref, *flags, "-o", str(spec_path)])
    assert result.exit_code == 0, result.output
    assert f"{sum(p.numel() for p in factory().parameters())} params (as the module)" in result.output
    assert f"`uhn import {ref} {' '.join(flags)} -o {spec_path}`" in spec_path.read_text()  # how to redo it
    small = small_run_overrides(40)
    result = runner.invoke(app, ["train", str(spec_path), "-o", str(run), "--mode", "uhn", "--device", "cpu", *small])
    assert result.exit_code == 0, result.output
    module_file, plain = tmp_path / "module.safetensors", tmp_path / "plain.safetensors"
    result = runner.invoke(app, ["export", str(run), "-o", str(module_file), "--for-module", ref])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["export", str(run), "-o", str(plain)]).exit_code == 0

    module = factory().eval()
    module.load_state_dict(load_file(str(module_file)), strict=True)
    _, spec_model = load_exported(plain)
    with torch.no_grad():
        assert torch.allclose(module(*inputs()), spec_model.eval()(*inputs()), atol=1e-5, rtol=1e-4)


def test_export_for_module_keeps_the_version_records_a_module_loader_requires(tmp_path) -> None:
    """A class whose ``_load_from_state_dict`` requires its state dict's version record (as
    torchvision's MNASNet's does): ``uhn export --for-module`` loads the generated weights
    into it with the module's own version records, so the export succeeds."""
    from typer.testing import CliRunner

    from tests.import_models import zoo
    from uhn_cli.main import app

    runner = CliRunner()
    ref = f"{zoo.__file__}:ChannelShuffle"
    spec_path, run, out = tmp_path / "spec.yaml", tmp_path / "run", tmp_path / "module.safetensors"
    assert runner.invoke(app, ["import", ref, "--input-shape", "3,8,8", "-o", str(spec_path)]).exit_code == 0
    small = small_run_overrides(40)
    result = runner.invoke(app, ["train", str(spec_path), "-o", str(run), "--mode", "uhn", "--device", "cpu", *small])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["export", str(run), "-o", str(out), "--for-module", ref])
    assert result.exit_code == 0, result.output
    assert out.is_file()
