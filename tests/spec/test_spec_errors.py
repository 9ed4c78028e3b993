"""Malformed specs fail with one clear message that names the YAML path and the bad value.

Each case edits a small valid spec in one place and asserts the exact message, so a change
that makes a message vaguer (or drops the path) fails here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from uhn_cli.main import app
from uhn_spec import SpecError, spec_from_text

MLP = """\
name: tiny_mlp
family: mlp
task:
  dataset: mnist
layers:
  - kind: linear
    in_features: 784
    out_features: 128
    input_pooling: reshape_to_2d
  - kind: linear
    in_features: 128
    out_features: 10
train:
  epochs: 2
  warmup: 1
"""

CNN = """\
name: tiny_cnn
family: cnn
cnn_stage_num: 1
task:
  dataset: cifar10
layers:
  - kind: conv2d
    in_channels: 3
    out_channels: 8
    kernel_size: 3
  - kind: linear
    in_features: 8
    out_features: 10
    input_pooling: avg_pooling
"""

TRANSFORMER = """\
name: tiny_transformer
family: transformer
task:
  dataset: imdb
  vocab_size: 100
layers:
  - kind: embedding
    num_embeddings: 100
    embedding_dim: 12
    max_length: 16
  - kind: mha
    dim: 12
    heads: 4
  - kind: linear
    in_features: 12
    out_features: 2
    input_pooling: first_token
"""


def edited(base: str, old: str, new: str) -> str:
    assert old in base, f"test bug: {old!r} is not in the base spec"
    return base.replace(old, new, 1)


CASES: dict[str, tuple[str, str]] = {
    "size chain mismatch": (
        edited(MLP, "in_features: 128", "in_features: 64"),
        "layers[1].in_features: 64 does not match layers[0].out_features (128)",
    ),
    "unknown layer kind": (
        edited(MLP, "kind: linear\n    in_features: 128", "kind: lstm\n    in_features: 128"),
        "layers[1].kind: 'lstm' is not a layer kind; use one of: …",
    ),
    "layer without kind": (
        edited(MLP, "  - kind: linear\n    in_features: 128", "  - in_features: 128"),
        "layers[1].kind: missing; use one of: …",
    ),
    "unknown top-level field": (
        MLP + "epochs: 3\n",
        "epochs: unknown field; allowed here: name, description, "
        "family, cnn_stage_num, task, layers, generated, generator, train",
    ),
    "misspelt layer field": (
        edited(MLP, "    out_features: 10", "    out_feature: 10"),
        "layers[1].out_feature: unknown field; allowed here: …",
    ),
    "missing task": (edited(MLP, "task:\n  dataset: mnist\n", ""), "task: Field required"),
    "unknown dataset": (
        edited(MLP, "dataset: mnist", "dataset: mnistt"),
        "task.dataset: Input should be 'synthetic', 'mnist', … or 'recursive_formula_regression' (got 'mnistt')",
    ),
    "negative size": (
        edited(MLP, "out_features: 128", "out_features: -5"),
        "layers[0].out_features: Input should be greater than or equal to 1 (got -5)",
    ),
    "epochs and steps both": (
        edited(MLP, "  warmup: 1", "  steps: 10\n  warmup: 1"),
        "train: give exactly one of epochs and steps",
    ),
    "neither epochs nor steps": (edited(MLP, "  epochs: 2\n", ""), "train: give exactly one of epochs and steps"),
    "warmup longer than training": (
        edited(MLP, "warmup: 1", "warmup: 5"),
        "train.warmup: 5 exceeds the training length (2)",
    ),
    "YAML syntax error": (
        edited(MLP, "  dataset: mnist", "  dataset: [mnist"),
        "line 5, column 7: invalid YAML: expected ',' or ']', but got ':'",
    ),
    "outputs differ from the classes": (
        edited(MLP, "out_features: 10", "out_features: 12"),
        "layers[1]: outputs 12 but task mnist needs 10",
    ),
    "identity shortcut across a size change": (
        edited(MLP, "    out_features: 10", "    out_features: 10\n    shortcut: true"),
        "layers[1].shortcut: an identity shortcut needs in_features == out_features (got 128 -> 10); "
        "set shortcut: false",
    ),
    "image read without pooling": (
        edited(MLP, "    input_pooling: reshape_to_2d\n", ""),
        "layers[0].input_pooling: 'none' cannot read image 1x28x28 from the mnist input; "
        "use reshape_to_2d, avg_pooling or max_pooling",
    ),
    "dropout of one or more": (
        edited(MLP, "    out_features: 10", "    out_features: 10\n    dropout: 1.5"),
        "layers[1].dropout: Input should be less than 1 (got 1.5)",
    ),
    "unknown activation": (
        edited(MLP, "    out_features: 10", "    out_features: 10\n    activation: swish"),
        "layers[1].activation.type: Input should be 'none', 'leaky_relu', "
        "'elu', 'silu', 'relu', 'gelu', 'tanh' or 'sigmoid' (got 'swish')",
    ),
    "bad name": (
        edited(MLP, "name: tiny_mlp", "name: tiny mlp"),
        "name: must be 1 to 100 letters, digits, '_', '.' and '-', "
        "starting with a letter or digit; it names the run folder (got 'tiny mlp')",
    ),
    "a list instead of a mapping": (
        "- a\n- b\n",
        "the spec is a YAML list; a spec is a YAML mapping with name, family, task and layers",
    ),
    "undefined template variable": ("name: {{ depth }}\n", "line 1: template error: 'depth' is undefined"),
    "structure heads not dividing": (
        MLP + "generator: {structure_encoder: true, structure_heads: 5}\n",
        "generator.structure_heads: 5 does not divide the structure width 2*structure_freqs = 64",
    ),
    "even conv kernel": (
        edited(CNN, "kernel_size: 3", "kernel_size: 4"),
        "layers[0].kernel_size: must be odd so that padding k//2 keeps the size (got 4); use 5",
    ),
    "conv channel mismatch": (
        edited(CNN, "in_channels: 3", "in_channels: 1"),
        "layers[0].in_channels: 1 does not match the cifar10 input (3)",
    ),
    "attention heads not dividing the width": (
        edited(TRANSFORMER, "heads: 4", "heads: 5"),
        "layers[1].heads: 5 heads do not divide dim 12; pick a divisor of 12",
    ),
    "embedding vocabulary mismatch": (
        edited(TRANSFORMER, "num_embeddings: 100", "num_embeddings: 99"),
        "layers[0].num_embeddings: 99 does not match task.vocab_size (100); set both to the same vocabulary size",
    ),
}


def spec_error(text: str, overrides: list[str] | None = None) -> str:
    with pytest.raises(SpecError) as caught:
        spec_from_text(text, overrides=overrides)
    return str(caught.value)


def test_base_specs_are_valid() -> None:
    for text in (MLP, CNN, TRANSFORMER):
        spec_from_text(text)


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_spec_names_path_and_value(case: str) -> None:
    text, expected = CASES[case]
    message = spec_error(text)
    assert "\n" not in message
    # "…" stands for a list of choices taken from the registry or schema.
    head, _, tail = expected.partition("…")
    assert message.startswith(head) and message.endswith(tail), message
    if "…" not in expected:
        assert message == expected


def test_unknown_kind_lists_every_registered_kind() -> None:
    from uhn_spec.layers import REGISTRY

    text, _ = CASES["unknown layer kind"]
    assert spec_error(text).endswith(", ".join(REGISTRY))


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("layers[5].dropout=0.1", "--set: 'layers[5].dropout=0.1': no such path in the spec"),
        ("train.epochs.x=1", "--set: 'train.epochs.x=1': no such path in the spec"),
        ("train.epochs", "--set: 'train.epochs' is not PATH=VALUE (e.g. train.epochs=3)"),
        ("=3", "--set: '=3' has an empty path"),
        ("layers[1].in_features=64", "layers[1].in_features: 64 does not match layers[0].out_features (128)"),
        (
            "layers[0].dropout=lots",
            "layers[0].dropout: Input should be a valid number, unable to parse string as a number (got 'lots')",
        ),
        (
            "train.epochs=[1,2",
            "--set: 'train.epochs=[1,2': the value is not valid YAML (expected ',' or ']', "
            "but got '<stream end>'); quote a string value",
        ),
        (
            "x=!!python/object/apply:os.system ['true']",
            "--set: \"x=!!python/object/apply:os.system ['true']\": the value is not valid YAML (could not determine a "
            "constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system'); quote a string value",
        ),
        ("train.lr=.nan", "train.lr: nan is not finite; give a finite number"),
        ("generator.sigma=inf", "generator.sigma: 'inf' is not finite; give a finite number"),
        (
            "train.seed=99999999999999999999",
            "train.seed: 99999999999999999999 does not fit a 64-bit integer (at most 9223372036854775807)",
        ),
    ],
)
def test_bad_override(override: str, expected: str) -> None:
    assert spec_error(MLP, [override]) == expected


def test_duplicate_keys_are_refused_naming_the_key_and_both_lines() -> None:
    assert spec_error(MLP + "train:\n  epochs: 5\n") == "train: duplicate key at lines 13 and 16; keep one of them"
    doubled = edited(MLP, "    out_features: 10", "    out_features: 10\n    out_features: 12")
    assert spec_error(doubled) == "layers[1].out_features: duplicate key at lines 12 and 13; keep one of them"


def test_merge_keys_may_be_overridden() -> None:
    """A key given beside a ``<<:`` merge overrides the merged one; that is not a duplicate."""
    merged = edited(
        MLP, "  - kind: linear\n    in_features: 128\n", "  - <<: {kind: linear, in_features: 128, out_features: 5}\n"
    )
    assert spec_from_text(merged).layers[1].out_features == 10


def test_layers_that_are_not_a_list() -> None:
    assert spec_error(MLP.split("layers:")[0] + "layers: 3\n") == "layers: Input should be a valid list (got 3)"


def test_good_override_changes_the_spec() -> None:
    spec = spec_from_text(MLP, overrides=["train.epochs=7", "layers[0].dropout=0.25"])
    assert spec.train.epochs == 7
    assert spec.layers[0].dropout == 0.25


# --------------------------------------------------------------------------- CLI level

runner = CliRunner()


def run_cli(*args: str):
    result = runner.invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]


def test_cli_missing_spec_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert_one_line_error(run_cli("validate", str(missing)), "spec file not found", str(missing))


def test_cli_missing_plan_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    assert_one_line_error(run_cli("inspect", str(missing)), "plan file not found", str(missing))


def test_cli_bad_spec(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(CASES["size chain mismatch"][0])
    assert_one_line_error(
        run_cli("validate", str(bad)), f"{bad}: layers[1].in_features: 64 does not match layers[0].out_features (128)"
    )


def test_cli_bad_override(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(MLP)
    assert_one_line_error(
        run_cli("validate", str(good), "--set", "train.nope"), "--set: 'train.nope' is not PATH=VALUE"
    )


def test_cli_corrupt_plan(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"definitely not a zip archive" * 10)
    assert_one_line_error(run_cli("inspect", str(corrupt)), str(corrupt), "not a readable uhn plan")


def test_installed_command_reports_one_line(tmp_path: Path) -> None:
    """The real process, not the test runner: stderr is one line, stdout empty, exit code 2."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(CASES["warmup longer than training"][0])
    done = subprocess.run(
        [sys.executable, "-m", "uhn_cli", "validate", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == f"error: {bad}: train.warmup: 5 exceeds the training length (2)\n"


# --------------------------------------------------------------------------- round 2 (issue 26)


@pytest.mark.parametrize(
    "name", ["..", ".", ".hidden", "a/b", "a\\\\b", "-x", "x" * 101, "x" * 300, "a\\x00b", "tiny mlp"]
)
def test_names_that_would_leave_the_runs_folder_are_refused(name: str) -> None:
    text = edited(MLP, "name: tiny_mlp", f'name: "{name}"')
    message = spec_error(text)
    assert message.startswith("name: must be 1 to 100 letters, digits, '_', '.' and '-'"), message
    assert "(got " in message and len(message) < 300


def test_the_longest_name_is_accepted() -> None:
    assert spec_from_text(edited(MLP, "name: tiny_mlp", "name: " + "x" * 100)).name == "x" * 100


def test_recursive_names_leave_room_for_the_levels() -> None:
    from uhn_spec.modes.recursive import recursive_from_text

    text = "name: {name}\nleaf: {{}}\ndepth: 16\ntrain: {{steps: 2, warmup: 0}}\n"
    with pytest.raises(SpecError, match=r"name: must be 1 to 96 letters.*each H_k is named <name>_h<k>"):
        recursive_from_text(text.format(name="r" * 97))


def test_a_self_referencing_yaml_alias_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import uhn_spec.safe_yaml

    monkeypatch.setattr(uhn_spec.safe_yaml, "MAX_YAML_NODES", 10_000)  # without the check: the count error
    for text, path, line in (("a: &a [*a]\n", "a[0]", 1), ("b:\n  c: &x {d: [1, *x]}\n", "b.c.d[1]", 2)):
        assert (
            spec_error(text)
            == f"{path}: a YAML alias refers to the node (line {line}) that contains it; it would never end"
        )


def test_an_alias_used_twice_is_not_recursive() -> None:
    text = MLP.replace("train:\n", "x-shared: &w {epochs: 2, warmup: 1}\ntrain: *w\n").replace(
        "  epochs: 2\n  warmup: 1\n", ""
    )
    assert "unknown field" in spec_error(text)  # reached validation: the aliases themselves were fine


@pytest.mark.parametrize("depth", [25, 120, 400])
def test_deeply_nested_blocks_give_one_line(depth: int) -> None:
    loops = "".join(f"{{% for i{k} in [1] %}}" for k in range(depth)) + "x" + "{% endfor %}" * depth
    message = spec_error(f"name: {loops}\n")
    assert "template error: the template nests blocks or expressions too deeply to compile" in message


def cli_validate(path: Path) -> subprocess.CompletedProcess[str]:
    """``uhn validate PATH`` in a real process (a hang fails the test at the timeout, not the suite)."""
    return subprocess.run(
        [sys.executable, "-m", "uhn_cli", "validate", str(path)], capture_output=True, text=True, timeout=60
    )


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no FIFOs here")
def test_a_fifo_given_as_a_spec_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "spec.yaml"
    __import__("os").mkfifo(fifo)
    done = cli_validate(fifo)
    assert (done.returncode, done.stdout) == (2, "")
    assert (
        done.stderr == f"error: {fifo}: not a regular file (a FIFO, device or socket); a spec file is a regular file\n"
    )


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero here")
def test_a_device_given_as_a_spec_is_refused_without_reading_it() -> None:
    done = cli_validate(Path("/dev/zero"))
    assert (done.returncode, done.stdout) == (2, "")
    assert (
        done.stderr
        == "error: /dev/zero: not a regular file (a FIFO, device or socket); a spec file is a regular file\n"
    )


def test_a_folder_given_as_a_spec_gives_one_line(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("validate", str(tmp_path)), f"{tmp_path}: a folder; a spec file is a regular file")


def test_every_spec_reader_is_bounded(tmp_path: Path) -> None:
    """Family, multi-task and recursive files are read as specs are: at most 4 MiB."""
    padding = "#" * (4 * 2**20) + "\n"
    for name, text in (
        ("family.yaml", "name: f\nmembers: [member.yaml]\n"),
        ("multitask.yaml", "name: m\ntasks: [{spec: member.yaml, probability: 1}]\n"),
        ("recursive.yaml", "name: r\nleaf: member.yaml\ndepth: 0\ntrain: {steps: 2, warmup: 0}\n"),
    ):
        path = tmp_path / name
        path.write_text(text + padding)
        assert_one_line_error(
            run_cli("validate", str(path)), f"{path}: ", "more than a spec file holds (at most 4194304)"
        )


@pytest.mark.parametrize("label", ["..", ".", "../x", "a/b", ".hidden", "a\\b", "a\x00b", ""])
def test_a_plan_name_that_is_no_folder_name_is_refused_for_the_default_run_folder(label: str) -> None:
    from uhn_runtime.train.run_dir import default_run_dir
    from uhn_spec.errors import UHNError

    with pytest.raises(UHNError, match="cannot name a folder under runs/; give the run folder with -o"):
        default_run_dir(label)


def test_a_long_multitask_label_is_shortened_to_one_folder_name() -> None:
    from uhn_runtime.train.run_dir import default_run_dir

    folder = default_run_dir("+".join(["m" * 100] * 5))
    assert folder.parent == Path("runs") / ("m" * 100)
