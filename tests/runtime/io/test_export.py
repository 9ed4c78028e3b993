"""Export round trip (the plain module reproduces the generator's evaluation) and the
train / export / evaluate commands."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import KillAfter, RunInterrupted
from tests.tiny_specs import tiny_plan, tiny_spec_yaml
from uhn_cli.main import app
from uhn_runtime.data import load_task_data
from uhn_runtime.io.export import export_run, load_exported, load_trained_source
from uhn_runtime.train.evaluate import evaluate_module, generate_weights
from uhn_runtime.train.run import TrainOptions, start_run
from uhn_runtime.train.run_dir import RunDir
from uhn_spec.metrics import Accuracy

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    root = tmp_path_factory.mktemp("export") / "run"
    start_run(tiny_plan(epochs=3), root, TrainOptions(mode="both", device="cpu", progress=io.StringIO()))
    return RunDir.open(root)


@pytest.mark.parametrize("kind", ["uhn", "direct"])
def test_exported_module_reproduces_the_generated_model(trained_run: RunDir, kind: str, tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    state = export_run(trained_run, path, kind, CPU)  # type: ignore[arg-type]
    spec, model = load_exported(path)
    assert list(state) == [name for name, _ in model.named_parameters()]  # plain skeleton names
    # Outputs: the plain module equals the functional target running the generated weights.
    source, target, precision = load_trained_source(trained_run, kind, CPU)  # type: ignore[arg-type]
    flat = generate_weights(source, precision)
    data = load_task_data(spec.task)
    batch = next(data.eval_batches("test", 32))
    target.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch.model_kwargs()), target.forward(flat, **batch.model_kwargs()))
    # Metric: the same number as the run's own final evaluation.
    assert evaluate_module(model, data, "test", CPU) == trained_run.summary()[kind]


def test_export_refuses_an_unfinished_phase(tmp_path: Path) -> None:
    with pytest.raises(RunInterrupted):
        start_run(
            tiny_plan(epochs=3),
            tmp_path / "run",
            TrainOptions(device="cpu", progress=io.StringIO(), observers=(KillAfter(1),), checkpoint_seconds=0.0),
        )
    with pytest.raises(Exception, match="has not finished.*--resume"):
        export_run(RunDir.open(tmp_path / "run"), tmp_path / "m.safetensors", "uhn", CPU)


# --------------------------------------------------------------------------- CLI

runner = CliRunner()


def test_cli_train_export_evaluate(tmp_path: Path) -> None:
    spec_path = tmp_path / "tiny.yaml"
    spec_path.write_text(tiny_spec_yaml(epochs=3))
    run = tmp_path / "run"
    result = runner.invoke(
        app, ["train", str(spec_path), "--out", str(run), "--mode", "both", "--set", "train.epochs=2"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    assert f"test accuracy:  uhn {summary['uhn']:.4f}" in result.output
    assert f"direct {summary['direct']:.4f}" in result.output
    assert "uhn epoch 2/2" in result.output  # progress lines
    assert "epochs: 2" in (run / "config.yaml").read_text()  # the override is recorded
    assert json.loads((run / "run.json").read_text())["overrides"] == ["train.epochs=2"]

    model = tmp_path / "model.safetensors"
    result = runner.invoke(app, ["export", str(run), "-o", str(model)])
    assert result.exit_code == 0, result.output
    assert model.is_file()

    result = runner.invoke(app, ["evaluate", str(model)])
    assert result.exit_code == 0, result.output
    assert f"test accuracy {summary['uhn']:.4f}" in result.output

    result = runner.invoke(app, ["evaluate", str(run)])
    assert result.exit_code == 0, result.output
    assert f"uhn: test accuracy {summary['uhn']:.4f}" in result.output
    assert f"direct: test accuracy {summary['direct']:.4f}" in result.output


def test_cli_resume_continues_a_killed_run(tmp_path: Path) -> None:
    spec_path = tmp_path / "tiny.yaml"
    spec_path.write_text(tiny_spec_yaml(epochs=3))
    with pytest.raises(RunInterrupted):
        start_run(
            tiny_plan(epochs=3),
            tmp_path / "run",
            TrainOptions(device="cpu", progress=io.StringIO(), observers=(KillAfter(1),), checkpoint_seconds=0.0),
        )
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "uhn: resuming from epoch 1/3" in result.output
    assert (tmp_path / "run" / "summary.json").is_file()


def test_cli_spec_compare_direct_runs_the_baseline_by_default(tmp_path: Path) -> None:
    spec_path = tmp_path / "tiny.yaml"
    spec_path.write_text(tiny_spec_yaml(epochs=1, compare_direct=True))
    result = runner.invoke(app, ["train", str(spec_path), "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["direct"] is not None
    result = runner.invoke(app, ["train", str(spec_path), "--out", str(tmp_path / "b"), "--mode", "uhn"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["direct"] is None


def test_cli_nan_loss_exits_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Accuracy, "loss", lambda self, outputs, targets: outputs.sum() * float("inf"))
    spec_path = tmp_path / "tiny.yaml"
    spec_path.write_text(tiny_spec_yaml(epochs=2, init_steps=0))
    result = runner.invoke(app, ["train", str(spec_path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "at step 1 (epoch 1, batch 1/3)" in errors[0]
    assert "Traceback" not in result.output


def test_cli_train_reports_a_used_run_folder_and_bad_flags(tmp_path: Path) -> None:
    spec_path = tmp_path / "tiny.yaml"
    spec_path.write_text(tiny_spec_yaml(epochs=1, init_steps=0))
    run = tmp_path / "run"
    assert runner.invoke(app, ["train", str(spec_path), "--out", str(run)]).exit_code == 0
    again = runner.invoke(app, ["train", str(spec_path), "--out", str(run)])
    assert again.exit_code == 2 and "already holds a run" in again.output
    unknown = runner.invoke(app, ["train", str(spec_path), "--mode", "sideways"], env={"COLUMNS": "300"})
    assert unknown.exit_code == 2 and "'sideways' is not one of 'uhn', 'direct', 'both'" in unknown.output
    wrong = runner.invoke(app, ["export", str(run), "-o", str(tmp_path / "model.pt")])
    assert wrong.exit_code == 2 and ".safetensors" in wrong.output


# --------------------------------------------------------------------------- ONNX

TINY_CNN = """\
name: tiny_cnn
family: cnn
cnn_stage_num: 2
task: {dataset: synthetic, synthetic: {task_type: image_classification, input_dims: [2, 6, 6], num_outputs: 3}}
layers:
  - {kind: conv2d, in_channels: 2, out_channels: 4, kernel_size: 3, norm: true, stage_pooling: max_pooling}
  - {kind: conv2d, in_channels: 4, out_channels: 4, kernel_size: 3, shortcut: true, activation: silu}
  - {kind: linear, in_features: 4, out_features: 3, input_pooling: avg_pooling}
"""


def onnx_outputs(path: Path, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {"x": "input"}
    (outputs,) = session.run(["output"], {names.get(k, k): v.numpy() for k, v in inputs.items()})
    return torch.from_numpy(outputs)


def test_cli_export_onnx_matches_the_plain_module(trained_run: RunDir, tmp_path: Path) -> None:
    onnx_path = tmp_path / "model.onnx"
    result = runner.invoke(app, ["export", str(trained_run.root), "--onnx", "-o", str(onnx_path)])
    assert result.exit_code == 0, result.output
    assert "onnxruntime matches PyTorch" in result.output
    export_run(trained_run, tmp_path / "model.safetensors", "uhn", CPU)
    spec, model = load_exported(tmp_path / "model.safetensors")
    batch = next(load_task_data(spec.task).eval_batches("test", 5))  # another batch size than exported
    with torch.no_grad():
        expected = model.eval()(**batch.model_kwargs())
    torch.testing.assert_close(onnx_outputs(onnx_path, batch.model_kwargs()), expected, atol=1e-5, rtol=1e-4)
    wrong = runner.invoke(app, ["export", str(trained_run.root), "--onnx", "-o", str(tmp_path / "m.safetensors")])
    assert wrong.exit_code == 2 and "ends in .onnx" in wrong.output
    # An export converts too: the same ONNX model from the safetensors file.
    from_file = runner.invoke(
        app, ["export", str(tmp_path / "model.safetensors"), "--onnx", "-o", str(tmp_path / "f.onnx")]
    )
    assert from_file.exit_code == 0, from_file.output
    torch.testing.assert_close(onnx_outputs(tmp_path / "f.onnx", batch.model_kwargs()), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["cnn", "graph_node_classification", "text_classification", "imported"])
def test_export_onnx_of_cnn_graph_text_and_imported_targets(kind: str, tmp_path: Path) -> None:
    """``imported``: a torch.export graph (ConvNeXt's block: depthwise conv, permutes, layer
    scale) as ``uhn import`` writes it."""
    from tests.import_models import zoo
    from tests.tiny_specs import tiny_spec
    from uhn_runtime.data.synthetic import synthetic_batch
    from uhn_runtime.io.export import export_onnx
    from uhn_spec import ExperimentSpec, build_model, spec_from_text
    from uhn_spec.importer import import_model

    if kind == "imported":
        spec = ExperimentSpec.model_validate(import_model(zoo.ConvNeXtBlock().eval(), input_shape=(3, 8, 8)).spec)
    else:
        spec = spec_from_text(TINY_CNN) if kind == "cnn" else tiny_spec(kind)
    torch.manual_seed(0)
    model = build_model(spec).eval()
    assert export_onnx(model, tmp_path / "m.onnx") < 1e-4
    inputs = synthetic_batch(spec.task, 7, CPU).model_kwargs()  # other batch (graph: node) count
    with torch.no_grad():
        expected = model(**inputs)
    torch.testing.assert_close(onnx_outputs(tmp_path / "m.onnx", inputs), expected, atol=1e-5, rtol=1e-4)


def test_export_onnx_without_the_extra_says_how_to_install_it(
    trained_run: RunDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # makes `import onnxscript` fail
    result = runner.invoke(app, ["export", str(trained_run.root), "--onnx", "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2 and "pip install 'uhn[onnx]'" in result.output
    assert not (tmp_path / "m.onnx").exists()


def test_a_failed_onnx_check_leaves_the_file_already_there(tmp_path: Path) -> None:
    from tests.tiny_specs import tiny_spec
    from uhn_runtime.io.export import ExportError, export_onnx
    from uhn_spec import build_model

    model = build_model(tiny_spec()).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(float("nan"))  # onnxruntime's outputs cannot match: the check fails
    existing = tmp_path / "model.onnx"
    existing.write_bytes(b"the model exported before")
    with pytest.raises(ExportError, match="more than 0.0001\\); the file already there is kept"):
        export_onnx(model, existing)
    assert existing.read_bytes() == b"the model exported before" and os.listdir(tmp_path) == ["model.onnx"]
    with pytest.raises(ExportError, match="nothing was written"):
        export_onnx(model, tmp_path / "new.onnx")
    assert os.listdir(tmp_path) == ["model.onnx"]
