"""Exported layer (a module captured by torch.export): property harness on imported modules,
and a graph file is data: a crafted one is refused before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.import_models import zoo
from tests.import_models.models import tiny_gcn
from tests.spec.layers.harness import check_layer_properties
from uhn_spec import ExperimentSpec
from uhn_spec.errors import SpecError
from uhn_spec.importer import import_model
from uhn_spec.modes.single import load_spec


class Mixed(nn.Module):
    """A paper kind (Linear), a norm and free tensors of three roles."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 6)
        self.norm = nn.LayerNorm(6)
        self.scale = nn.Parameter(torch.ones(6) * 0.5)
        self.table = nn.Parameter(torch.randn(3, 6))
        self.out = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.lin(x)) * self.scale + self.table[1]
        return self.out(torch.relu(h))


@pytest.mark.parametrize(
    ("factory", "kwargs"),
    [
        (Mixed, {"input_shape": (4,)}),
        (zoo.TinyViT, {"input_shape": (3, 8, 8)}),
        (tiny_gcn, {"graph": "synthetic", "input_shape": (12,)}),
    ],
    ids=["mixed", "vit", "gcn"],
)
def test_exported_properties(factory, kwargs: dict) -> None:
    torch.manual_seed(0)
    spec = ExperimentSpec.model_validate(import_model(factory(), **kwargs).spec)
    check_layer_properties(spec)


def test_generic_tensors_are_described_by_role_and_position() -> None:
    layer = import_model(Mixed(), input_shape=(4,)).spec["layers"][0]
    generic = [part["layer"] for part in layer["parts"] if part["layer"]["kind"] == "generic"]
    assert [list(g["tensors"]) for g in generic] == [["scale"], ["table"]]
    assert generic[0]["tensors"]["scale"] == {"shape": [6], "init_mean": 0.5, "init_std": 0.0}
    assert [part["layer"]["kind"] for part in layer["parts"]] == ["linear", "norm", "generic", "generic", "linear"]


def write_import(tmp_path: Path) -> tuple[Path, Path]:
    from typer.testing import CliRunner

    from tests.import_models import models
    from uhn_cli.main import app

    spec_path = tmp_path / "spec.yaml"
    result = CliRunner().invoke(
        app,
        ["import", f"{models.__file__}:tiny_gcn", "--graph", "synthetic", "--input-shape", "12", "-o", str(spec_path)],
    )
    assert result.exit_code == 0, result.output
    return spec_path, tmp_path / "spec.graph.json"


@pytest.mark.parametrize(
    ("node", "complaint"),
    [
        (
            {"name": "evil", "op": "builtins.exec", "args": ["open('MARKER', 'w')"]},
            "operator 'builtins.exec' is not among",
        ),
        (
            {"name": "evil", "op": "aten.relu.default", "args": [{"py/object": "os.system"}]},
            "a dict is not a graph value",
        ),
        (
            {"name": "evil", "op": "aten.relu.default", "args": [{"ref": "not_defined"}]},
            "'not_defined' is used before it is defined",
        ),
    ],
    ids=["operator", "object", "reference"],
)
def test_a_crafted_graph_file_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, node: dict, complaint: str
) -> None:
    spec_path, graph_path = write_import(tmp_path)
    assert isinstance(load_spec(spec_path), ExperimentSpec)
    graph = json.loads(graph_path.read_text())
    graph["nodes"].insert(0, node)
    graph_path.write_text(json.dumps(graph))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as err:
        load_spec(spec_path)
    assert complaint in str(err.value) and "layers[0].graph" in str(err.value), str(err.value)
    assert not (tmp_path / "MARKER").exists()


def test_the_graph_file_is_a_plain_name_next_to_the_spec(tmp_path: Path) -> None:
    spec_path, graph_path = write_import(tmp_path)
    text = spec_path.read_text()
    assert "graph: spec.graph.json" in text
    spec_path.write_text(text.replace("graph: spec.graph.json", "graph: ../elsewhere.graph.json"))
    with pytest.raises(
        SpecError, match=r"layers\[0\]\.graph: '../elsewhere.graph.json': give the name of a .json file"
    ):
        load_spec(spec_path)
    graph_path.unlink()
    spec_path.write_text(text)
    with pytest.raises(SpecError, match="no such graph file"):
        load_spec(spec_path)
