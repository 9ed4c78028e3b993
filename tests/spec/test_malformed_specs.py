"""50 malformed specs, written to a temporary folder outside the project, each run through
``uhn validate`` and ``uhn compile``: each must give exactly one line
``error: <file>: <field>: <what is wrong>`` on stderr, nothing on stdout, and exit code 2.

A case is (spec text or bytes, --set overrides, the field the line must name, a fragment of
the message). The field is the YAML path, or the location (``line 3``) for template and YAML
errors; ``None`` for whole-file errors that have no field (an empty or oversized file).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
from typer.testing import CliRunner

import uhn_spec.template
from uhn_cli.main import app

BASE = """\
name: corpus_mlp
family: mlp
task:
  dataset: digits
layers:
  - kind: linear
    in_features: 64
    out_features: 16
    input_pooling: reshape_to_2d
  - kind: linear
    in_features: 16
    out_features: 10
generator:
  index_freqs: 16
  hidden: 16
train:
  epochs: 2
  warmup: 1
  lr: 1.0e-3
"""


def edit(old: str, new: str) -> str:
    assert old in BASE, f"test bug: {old!r} is not in the base spec"
    return BASE.replace(old, new, 1)


def wide(width: str) -> str:
    return edit("out_features: 16\n", f"out_features: {width}\n").replace("in_features: 16", f"in_features: {width}")


class Case(NamedTuple):
    spec: str | bytes
    field: str | None
    fragment: str
    overrides: tuple[str, ...] = ()


CASES: dict[str, Case] = {
    # --- sizes
    "terabyte target": Case(wide("1000000000"), "layers[0]", "compile needs about"),
    "parameter count beyond int64": Case(wide("1000000000000000000"), "layers[0]", "more than 2**63 elements"),
    "integer beyond int64": Case(
        edit("out_features: 16", "out_features: 99999999999999999999"),
        "layers[0].out_features",
        "does not fit a 64-bit integer",
    ),
    "negative width": Case(
        edit("out_features: 16", "out_features: -16"), "layers[0].out_features", "greater than or equal to 1"
    ),
    "zero width": Case(
        edit("out_features: 16", "out_features: 0"), "layers[0].out_features", "greater than or equal to 1"
    ),
    "size chain mismatch": Case(
        edit("in_features: 16", "in_features: 17"), "layers[1].in_features", "does not match layers[0].out_features"
    ),
    "wrong number of outputs": Case(edit("out_features: 10", "out_features: 9"), "layers[1]", "needs 10"),
    "zero batch": Case(edit("  lr: 1.0e-3", "  batch_size: 0"), "train.batch_size", "greater than or equal to 1"),
    "no layers": Case(BASE[: BASE.index("layers:")] + "layers: []\n", "layers", "at least 1 item"),
    # --- kinds and types
    "layers not a list": Case(BASE[: BASE.index("layers:")] + "layers: 3\n", "layers", "valid list"),
    "layer not a mapping": Case(
        edit("  - kind: linear\n    in_features: 16", "  - 7\n  - kind: linear\n    in_features: 16"), "layers[1]", ""
    ),
    "unknown layer kind": Case(
        edit("kind: linear\n    in_features: 16", "kind: lstm\n    in_features: 16"),
        "layers[1].kind",
        "'lstm' is not a layer kind",
    ),
    "missing layer kind": Case(
        edit("  - kind: linear\n    in_features: 16", "  - in_features: 16"), "layers[1].kind", "missing"
    ),
    "unknown family": Case(edit("family: mlp", "family: rnn"), "family", "Input should be"),
    "unknown dataset": Case(edit("dataset: digits", "dataset: digitz"), "task.dataset", "Input should be"),
    "unknown top-level field": Case(BASE + "epochs: 3\n", "epochs", "unknown field"),
    "misspelt layer field": Case(
        edit("    out_features: 10", "    out_feature: 10"), "layers[1].out_feature", "unknown field"
    ),
    "string where a number goes": Case(
        edit("out_features: 16", "out_features: sixteen"), "layers[0].out_features", "valid integer"
    ),
    "fractional width": Case(edit("out_features: 16", "out_features: 16.5"), "layers[0].out_features", "valid integer"),
    "list where a number goes": Case(edit("lr: 1.0e-3", "lr: [1, 2]"), "train.lr", "valid number"),
    "mapping where a name goes": Case(edit("name: corpus_mlp", "name: {a: 1}"), "name", "valid string"),
    "bad name characters": Case(edit("name: corpus_mlp", "name: corpus mlp"), "name", "letters, digits"),
    "task is a string": Case(edit("task:\n  dataset: digits", "task: digits"), "task", "valid dictionary"),
    "missing task": Case(edit("task:\n  dataset: digits\n", ""), "task", "Field required"),
    "epochs and steps": Case(
        edit("  warmup: 1", "  warmup: 1\n  steps: 5"), "train", "exactly one of epochs and steps"
    ),
    "warmup too long": Case(edit("warmup: 1", "warmup: 9"), "train.warmup", "exceeds the training length"),
    "unknown activation": Case(
        edit("    out_features: 10", "    out_features: 10\n    activation: swish"),
        "layers[1].activation.type",
        "Input should be",
    ),
    # --- non-finite numbers
    "infinite sigma": Case(edit("  hidden: 16", "  hidden: 16\n  sigma: .inf"), "generator.sigma", "not finite"),
    "nan learning rate": Case(edit("lr: 1.0e-3", "lr: .nan"), "train.lr", "not finite"),
    "nan as a string": Case(edit("lr: 1.0e-3", "lr: nan"), "train.lr", "not finite"),
    "infinite dropout in a layer": Case(
        edit("    out_features: 10", "    out_features: 10\n    dropout: -.inf"), "layers[1].dropout", "not finite"
    ),
    # --- YAML
    "unclosed bracket": Case(edit("dataset: digits", "dataset: [digits"), "line 5, column", "invalid YAML"),
    "bad indentation": Case(edit("  dataset: digits", "  dataset: digits\n bad: 1"), "line 5", "invalid YAML"),
    "tab indentation": Case(edit("  epochs: 2", "\tepochs: 2"), "line ", "invalid YAML"),
    "python object tag": Case(
        edit("name: corpus_mlp", "name: !!python/object/apply:os.system ['true']"),
        "line 1",
        "could not determine a constructor",
    ),
    "duplicate top-level key": Case(BASE + "train:\n  epochs: 3\n", "train", "duplicate key at lines 16 and 20"),
    "duplicate nested key": Case(
        edit("    out_features: 16", "    out_features: 16\n    out_features: 32"),
        "layers[0].out_features",
        "duplicate key at lines 8 and 9",
    ),
    "alias bomb": Case(
        "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
        "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n",
        "",
        "more than 1000000 values",
    ),
    "a list, not a mapping": Case("- a\n- b\n", None, "the spec is a YAML list"),
    "empty file": Case("", None, "the spec is empty"),
    # --- encodings
    "latin-1 bytes": Case(
        BASE.replace("corpus_mlp", "corpus_mlp").encode() + "# caf\u00e9\n".encode("latin-1"), "byte ", "not UTF-8"
    ),
    "utf-16 file": Case(BASE.encode("utf-16"), "byte 0", "not UTF-8"),
    "NUL character": Case(edit("name: corpus_mlp", "name: corpus\x00mlp"), "character ", "unacceptable character"),
    # --- templates
    "sandbox escape": Case("name: {{ cycler.__init__.__globals__.os.system('true') }}\n", "line 1", "template error"),
    "unbounded range": Case("{% for i in range(10**12) %}x{% endfor %}\n", "line 1", "Range too big"),
    "macro with an unknown argument": Case(
        "{% macro m(a) %}{{ a }}{% endmacro %}\nname: {{ m(b=1) }}\n", "line 2", "no keyword argument 'b'"
    ),
    "division by zero": Case("name: x\nfamily: mlp\ncnn_stage_num: {{ 32 // 0 }}\n", "line 3", "ZeroDivisionError"),
    "include outside the folder": Case('{% include "../secret.yaml" %}\n', "line 1", "resolve only inside"),
    "huge string": Case('name: {{ "x" * 10**10 }}\n', "line 1", "more than the limit"),
    # --- overrides
    "unparsable override": Case(BASE, "--set", "not valid YAML", ("train.epochs=[1,2",)),
}

assert len(CASES) == 50, len(CASES)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("malformed")
    (folder.parent / "secret.yaml").write_text("name: secret\n")
    paths = {}
    for i, (name, case) in enumerate(CASES.items()):
        path = folder / f"case{i:02d}.yaml"
        if isinstance(case.spec, bytes):
            path.write_bytes(case.spec)
        else:
            path.write_text(case.spec, encoding="utf-8")
        paths[name] = path
    return paths


runner = CliRunner()


def assert_one_error_line(stderr: str, stdout: str, exit_code: int, path: Path, case: Case) -> None:
    assert exit_code == 2, (exit_code, stdout, stderr)
    assert stdout == "", stdout
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    prefix = f"error: {path}: "
    assert lines[0].startswith(prefix), lines[0]
    rest = lines[0][len(prefix) :]
    if case.field is not None:
        field, _, message = rest.partition(": ")
        assert field.startswith(case.field), f"field {field!r} is not {case.field!r}: {lines[0]}"
        assert message, lines[0]
    assert case.fragment in rest, lines[0]


@pytest.mark.parametrize("command", ["validate", "compile"])
@pytest.mark.parametrize("name", list(CASES))
def test_malformed_spec_gives_one_error_line(
    name: str, command: str, corpus: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(uhn_spec.template, "RENDER_SECONDS", 1.0)  # a hang case fails fast
    monkeypatch.setenv("UHN_MEMORY_LIMIT_GIB", "16")  # the same verdicts on any machine
    case = CASES[name]
    args = [command, str(corpus[name])]
    if command == "compile":
        args += ["-o", str(tmp_path / "plan.pt")]
    for item in case.overrides:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert_one_error_line(result.stderr, result.stdout, result.exit_code, corpus[name], case)
    assert not (tmp_path / "plan.pt").exists()


@pytest.mark.parametrize("name", ["terabyte target", "duplicate top-level key"])
def test_malformed_spec_in_a_real_process(name: str, corpus: dict[str, Path]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "uhn_cli", "validate", str(corpus[name])],
        capture_output=True,
        text=True,
        timeout=60,
        env={**__import__("os").environ, "UHN_MEMORY_LIMIT_GIB": "16"},
    )
    assert_one_error_line(done.stderr, done.stdout, done.returncode, corpus[name], CASES[name])
