"""The ``uhn`` command line: validate, compile, inspect; and that it is installed as ``uhn``."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import REPO_ROOT
from tests.tiny_specs import tiny_spec_yaml
from uhn_cli.main import app
from uhn_cli.reproduce_commands import DEFAULT_RESULTS, continue_command, table_command
from uhn_runtime.model.generator import count_generator_params
from uhn_runtime.train.checkpoint import load_checkpoint
from uhn_spec import load_plan
from uhn_spec.spec import GeneratorSpec

SPEC = """\
# A two-layer MLP on the bundled 8x8 digits.
name: cli_mlp
family: mlp
task:
  dataset: digits
layers:
  - kind: linear
    in_features: 64
    out_features: 32
    input_pooling: reshape_to_2d
  - kind: linear
    in_features: 32
    out_features: 10
    activation: silu
generator:
  index_freqs: 1024
  hidden: 64
"""
# 64*32 + 32 + 32*10 + 10
SPEC_PARAMS = 2410

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "cli_mlp.yaml"
    path.write_text(SPEC)
    return path


def test_help_lists_the_spec_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for name in ("validate", "compile", "inspect"):
        assert name in result.stdout


def test_validate(spec_file: Path) -> None:
    result = invoke("validate", spec_file)
    assert result.exit_code == 0
    assert re.fullmatch(
        rf"ok: cli_mlp \({SPEC_PARAMS} params, 2 layers; memory: compile ~[\d.]+ KiB, train ~[\d.]+ MiB\)\n",
        result.stdout,
    )


def test_validate_several_specs_with_overrides(spec_file: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text(SPEC.replace("cli_mlp", "other_mlp"))
    result = invoke(
        "validate", spec_file, other, "--set", "layers[0].out_features=16", "--set", "layers[1].in_features=16"
    )
    assert result.exit_code == 0
    params = 64 * 16 + 16 + 16 * 10 + 10
    lines = result.stdout.splitlines()
    assert [line.split(";")[0] for line in lines] == [
        f"ok: cli_mlp ({params} params, 2 layers",
        f"ok: other_mlp ({params} params, 2 layers",
    ]


def test_compile_writes_a_plan(spec_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "plans" / "mlp.pt"
    result = invoke("compile", spec_file, "-o", out)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"wrote {out} (")
    assert result.stdout.rstrip().endswith(f"): cli_mlp {SPEC_PARAMS} params")
    plan = load_plan(out)
    assert plan.targets[0].num_params == SPEC_PARAMS
    assert plan.source_text == SPEC  # the file as written, comments and all
    assert sorted(p.name for p in out.parent.iterdir()) == ["mlp.pt"]  # no temp file left


def test_compile_records_overrides(spec_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "mlp.pt"
    result = invoke("compile", spec_file, "-o", out, "--set", "layers[1].dropout=0.5")
    assert result.exit_code == 0, result.stderr
    plan = load_plan(out)
    assert plan.targets[0].spec.layers[1].dropout == 0.5
    assert plan.source_text == SPEC + "# --set layers[1].dropout=0.5\n"


def test_compile_several_specs_into_one_plan(spec_file: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text(SPEC.replace("cli_mlp", "other_mlp"))
    out = tmp_path / "multi.pt"
    result = invoke("compile", spec_file, other, "-o", out)
    assert result.exit_code == 0
    assert [t.name for t in load_plan(out).targets] == ["cli_mlp", "other_mlp"]


def test_failed_compile_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SPEC.replace("in_features: 32", "in_features: 33"))
    out = tmp_path / "bad.pt"
    result = invoke("compile", bad, "-o", out)
    assert result.exit_code == 2
    assert list(tmp_path.iterdir()) == [bad]


def test_compile_wants_a_plan_suffix(spec_file: Path, tmp_path: Path) -> None:
    result = invoke("compile", spec_file, "-o", tmp_path / "plan.bin")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --output: a plan file name ends in .pt")


def test_inspect_json_of_spec_and_of_its_plan_agree(spec_file: Path, tmp_path: Path) -> None:
    from_spec = json.loads(invoke("inspect", spec_file, "--json").stdout)
    out = tmp_path / "mlp.pt"
    invoke("compile", spec_file, "-o", out)
    from_plan = json.loads(invoke("inspect", out, "--json").stdout)
    assert from_spec == from_plan

    (target,) = from_spec["targets"]
    assert (target["name"], target["num_params"], target["num_layers"]) == ("cli_mlp", SPEC_PARAMS, 2)
    assert [p["name"] for p in target["params"]] == [
        "layers.0.weight",
        "layers.0.bias",
        "layers.1.weight",
        "layers.1.bias",
    ]
    assert [p["shape"] for p in target["params"]] == [[32, 64], [32], [10, 32], [10]]
    assert [p["offset"] for p in target["params"]] == [0, 2048, 2080, 2400]
    assert [p["param_type"] for p in target["params"]] == [0, 1, 0, 1]
    assert [p["layer"] for p in target["params"]] == [0, 0, 1, 1]
    # The paper's small UHN (F_v 1024, d 64).
    assert from_spec["generator_params"] == {"trainable": 148353, "total": 158613}


def test_inspect_table(spec_file: Path) -> None:
    result = invoke("inspect", spec_file)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert "target cli_mlp: mlp on digits, 2410 params, 2 layers" in lines
    rows = [line.split() for line in lines if line.strip().startswith(("0 ", "1 "))]
    assert rows == [
        ["0", "linear", "layers.0.weight", "32x64", "0", "2048", "0"],
        ["0", "linear", "layers.0.bias", "32", "2048", "32", "1"],
        ["1", "linear", "layers.1.weight", "10x32", "2080", "320", "0"],
        ["1", "linear", "layers.1.bias", "10", "2400", "10", "1"],
    ]
    assert ["total", str(SPEC_PARAMS)] in [line.split() for line in lines]
    assert lines[-1].startswith("generator: 148353 trainable, 158613 total parameters")


def test_inspect_json_gives_each_tensors_compact_index_descriptor(spec_file: Path) -> None:
    (target,) = json.loads(invoke("inspect", spec_file, "--json").stdout)["targets"]
    weight, bias = target["params"][2:4]
    assert weight["index"] == {
        "constants": {"layer_idx": 1, "layer_type": 0, "param_type": 0},
        "dims": [["output_idx", 10], ["input_idx", 32]],
    }
    assert bias["index"] == {
        "constants": {"layer_idx": 1, "layer_type": 0, "param_type": 1},
        "dims": [["output_idx", 10]],
    }
    assert "index_rows" not in target


def test_inspect_rows_of_one_tensor(spec_file: Path) -> None:
    (target,) = json.loads(invoke("inspect", spec_file, "--json", "--rows", "layers.1.bias").stdout)["targets"]
    shown = target["index_rows"]
    assert shown["param"] == "layers.1.bias" and shown["fields"][:4] == [
        "layer_idx",
        "layer_type",
        "param_type",
        "output_idx",
    ]
    assert shown["rows"] == [[1, 0, 1, i] + [-1] * 6 for i in range(10)]
    lines = invoke("inspect", spec_file, "--rows", "layers.1.bias").stdout.splitlines()
    start = lines.index("index rows of layers.1.bias (one per weight, C order; -1: field unused):")
    assert lines[start + 1].split()[:4] == ["layer_idx", "layer_type", "param_type", "output_idx"]
    assert [line.split() for line in lines[start + 3 : start + 13]] == [[str(v) for v in row] for row in shown["rows"]]


def test_inspect_rows_of_an_unknown_tensor_is_a_one_line_error(spec_file: Path) -> None:
    result = invoke("inspect", spec_file, "--rows", "layers.9.weight")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {spec_file}: --rows: no parameter tensor 'layers.9.weight'")
    assert result.stderr.count("\n") == 1


def test_inspect_rejects_overrides_of_a_plan(spec_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "mlp.pt"
    invoke("compile", spec_file, "-o", out)
    result = invoke("inspect", out, "--set", "train.seed=1")
    assert result.exit_code == 2
    assert "--set changes specs, not compiled plans" in result.stderr


@pytest.mark.parametrize(
    ("settings", "counts"),
    [
        ({}, (591_617, 612_117)),
        ({"index_freqs": 1024, "hidden": 64}, (148_353, 158_613)),
        ({"structure_encoder": True}, (641_665, 663_151)),
    ],
)
def test_generator_sizes_are_the_papers(settings: dict, counts: tuple[int, int]) -> None:
    assert count_generator_params(GeneratorSpec(**settings)) == counts


# --------------------------------------------------------------------------- packaging


def pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def test_console_script_is_the_typer_app() -> None:
    assert pyproject()["project"]["scripts"] == {"uhn": "uhn_cli.main:app"}
    installed = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert installed.get("uhn") == "uhn_cli.main:app", "reinstall: pip install -e ."


def test_every_python_package_is_listed_for_installation() -> None:
    """A package missing from [tool.setuptools] packages works in an editable install but
    is absent from a wheel: list every folder with an __init__.py."""
    tool = pyproject()["tool"]["setuptools"]
    renamed = tool.get("package-dir", {})
    listed = {renamed.get(name, name.replace(".", "/")) for name in tool["packages"]}
    roots = {folder.split("/")[0] for folder in listed}
    on_disk = {
        init.parent.relative_to(REPO_ROOT).as_posix()
        for root in roots
        for init in (REPO_ROOT / root).rglob("__init__.py")
    }
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"


def readme_commands() -> list[str]:
    """The first screen's two commands: install-and-run, then the tests."""
    blocks = re.findall(r"```sh\n(.*?)```", (REPO_ROOT / "README.md").read_text(), flags=re.S)
    return [blocks[0].strip(), blocks[1].strip()]


def test_ci_runs_the_readme_commands() -> None:
    script = REPO_ROOT / ".ci" / "run"
    assert os.access(script, os.X_OK), ".ci/run must be executable"
    lines = script.read_text().splitlines()
    assert "set -euo pipefail" in lines
    install, tests = readme_commands()
    assert install.startswith("python3 -m venv .venv") and "pip install -e '.[test]'" in install
    assert "pytest" in tests
    assert install in lines and tests in lines, "README.md and .ci/run give different commands"


# --------------------------------------------------------------------------- uhn train options and stops


def test_train_and_bench_list_their_choices_and_share_the_device_default() -> None:
    wide = {"COLUMNS": "300"}
    train_help = runner.invoke(app, ["train", "--help"], env=wide).output
    bench_help = runner.invoke(app, ["bench", "--help"], env=wide).output
    assert "<uhn|direct|both>" in train_help
    for text in (train_help, bench_help):
        assert re.search(r"--device\s+<auto\|cpu\|cuda>.*\[default: auto\]", text), text


def test_train_mode_direct_trains_only_the_baseline(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(tiny_spec_yaml(epochs=1, compare_direct=True))
    result = invoke("train", spec, "--out", tmp_path / "run", "--mode", "direct")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["uhn"] is None and summary["direct"] is not None
    assert json.loads((tmp_path / "run" / "run.json").read_text())["mode"] == "direct"


def has_a_train_record(run: Path) -> bool:
    metrics = run / "metrics.jsonl"
    return metrics.is_file() and '"event": "train"' in metrics.read_text()


def test_sigterm_saves_a_checkpoint_and_says_how_to_continue(tmp_path: Path) -> None:
    spec, run = tmp_path / "tiny.yaml", tmp_path / "run"
    spec.write_text(tiny_spec_yaml(epochs=5000, warmup=1))  # far longer than the test waits
    command = [sys.executable, "-m", "uhn_cli", "train", str(spec), "--out", str(run), "--device", "cpu"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not has_a_train_record(run):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("SIGTERM: stopped the uhn phase after epoch ") and "Traceback" not in stderr
    assert last.endswith(f"continue with `uhn train --resume {run}`")
    state = load_checkpoint(run / "checkpoints" / "uhn.pt")
    assert not state["finished"] and state["steps_done"] >= 3


# --------------------------------------------------------------------------- hardening


def test_help_does_not_import_torch() -> None:
    """`uhn --help` answers at once: no command module imports torch before it runs."""
    code = (
        "import sys\n"
        "from uhn_cli.main import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit as done:\n    assert done.code == 0\n"
        "for name in ('train', 'bench', 'compile'):\n"
        "    try:\n        app([name, '--help'])\n    except SystemExit:\n        pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torch_geometric')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_a_bug_shows_its_traceback(spec_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only uhn's own errors and file errors become one line; a ValueError is a bug."""
    import uhn_spec.source

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("a bug in uhn")

    monkeypatch.setattr(uhn_spec.source, "load_source", broken)
    result = runner.invoke(app, ["validate", str(spec_file)])
    assert isinstance(result.exception, ValueError)
    assert "error: " not in result.output


def test_train_refuses_a_target_too_large_before_allocating(
    spec_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UHN_MEMORY_LIMIT_GIB", "0.001")
    run_dir = tmp_path / "run"
    result = invoke("train", spec_file, "-o", run_dir)
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert re.fullmatch(
        rf"error: {re.escape(str(spec_file))}: layers\[0\]: "
        rf"{SPEC_PARAMS} parameters \(\d+% in this layer\): train needs about "
        r"[\d.]+ MiB, more than UHN_MEMORY_LIMIT_GIB=0.001 \(1.0 MiB\); "
        r"shrink the model, or set UHN_MEMORY_LIMIT_GIB .*",
        line,
    ), line
    assert not run_dir.exists()


def test_compile_refuses_what_cannot_fit_and_the_limit_can_be_raised(
    spec_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = tmp_path / "plan.pt"
    wide = ["--set", "layers[0].out_features=2000000", "--set", "layers[1].in_features=2000000"]
    monkeypatch.setenv("UHN_MEMORY_LIMIT_GIB", "1")
    result = invoke("compile", spec_file, "-o", plan, *wide)
    assert result.exit_code == 2 and re.search(
        r"compile needs about [\d.]+ GiB, more than UHN_MEMORY_LIMIT_GIB=1 ", result.stderr
    ), result.stderr
    assert not plan.exists()
    monkeypatch.setenv("UHN_MEMORY_LIMIT_GIB", "nonsense")
    assert "UHN_MEMORY_LIMIT_GIB: 'nonsense' is not a number of GiB" in invoke("validate", spec_file).stderr
    monkeypatch.setenv("UHN_MEMORY_LIMIT_GIB", "64")
    assert invoke("validate", spec_file, *wide).exit_code == 0


# Every numeric option out of range (or not a number): (arguments, the option and range the line names).
OUT_OF_RANGE = [
    (
        ["train", "{spec}", "--micro-shards", "1000000000"],
        "--micro-shards: '1000000000' is out of range; give an integer from 0 to 4096",
    ),
    (["train", "{spec}", "--micro-shards", str(2**64)], "--micro-shards: '18446744073709551616' is out of range"),
    (["train", "{spec}", "--micro-shards", "-1"], "give an integer from 0 to 4096"),
    (
        ["export", "{run}", "-o", "{out}.safetensors", "--recalibrate-bn", "100001"],
        "--recalibrate-bn: '100001' is out of range; give an integer from 0 to 100000",
    ),
    (
        ["bench", "{spec}", "--naive-max-gib", "nan"],
        "--naive-max-gib: 'nan' is not a number; give a number from 0 to 1024",
    ),
    (["bench", "{spec}", "--naive-max-gib", "inf"], "--naive-max-gib: 'inf' is not a number"),
    (["bench", "{spec}", "--naive-max-gib", "-1"], "--naive-max-gib: '-1' is out of range"),
    (
        ["bench", "{spec}", "--batch", str(10**12)],
        "--batch: '1000000000000' is out of range; give an integer from 1 to 65536",
    ),
    (["bench", "{spec}", "--batch", "1e3"], "--batch: '1e3' is not an integer"),
    (["bench", "{spec}", "--repeats", "0"], "--repeats: '0' is out of range; give an integer from 1 to 100"),
    (
        ["bench", "{spec}", "--target-segments", "5000"],
        "--target-segments: '5000' is out of range; give an integer from 0 to 1024",
    ),
    (["bench", "{spec}", "--matmul-size", "8"], "--matmul-size: '8' is out of range; give an integer from 16 to 8192"),
    (
        ["import", "m.py:M", "-o", "{out}.yaml", "--input-shape", "100000,100000,100000"],
        "--input-shape: '100000' in '100000,100000,100000' is out of range; "
        "give 1 to 3 comma-separated integers from 1 to 65536",
    ),
    (
        ["import", "m.py:M", "-o", "{out}.yaml", "--input-shape", "4096,4096,4096"],
        "--input-shape: '4096,4096,4096' holds 68,719,476,736 values; give a shape of at most 16,777,216",
    ),
    (
        ["import", "m.py:M", "-o", "{out}.yaml", "--input-shape", "3,,32"],
        "--input-shape: '3,,32'; give 1 to 3 comma-separated integers",
    ),
    (["import", "m.py:M", "-o", "{out}.yaml", "--input-shape", "1,2,3,4"], "--input-shape: '1,2,3,4'; give 1 to 3"),
    (
        ["reproduce", "demo", "--seeds", "1,,2"],
        "--seeds: '1,,2'; give 1 to 100 comma-separated integers from 0 to 4294967295",
    ),
    (["reproduce", "demo", "--seeds", "1,x"], "--seeds: 'x' in '1,x' is not an integer"),
    (["reproduce", "demo", "--seeds", str(2**32)], "--seeds: '4294967296' is out of range"),
    (["reproduce", "demo", "--seeds", "7,7"], "--seeds: '7,7' repeats a value"),
    (["reproduce", "demo", "--rows", "a,,b"], "--rows: 'a,,b' has an empty item"),
]


def test_a_stopped_reproduce_sitting_says_how_to_continue_its_own_rows() -> None:
    # Stopped by SIGTERM, `uhn reproduce table1 --rows cora_gat --results R` must not be told
    # to continue with the whole table into the default results folder.
    table = table_command("table1", "paper", "/data", "1,2", Path("/runs"), True, None)
    assert "--rows" not in table  # what the markdown cites: the whole table
    again = continue_command(table, "cora_gat", Path("/results"), "cpu")
    assert shlex.split(again) == [
        *shlex.split(table), "--rows", "cora_gat", "--results", "/results", "--device", "cpu"
    ]  # fmt: skip
    assert continue_command(table, None, DEFAULT_RESULTS, "auto") == table


@pytest.mark.parametrize(("args", "line"), OUT_OF_RANGE)
def test_every_numeric_option_refuses_what_is_out_of_its_range_in_one_line(
    spec_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], line: str
) -> None:
    monkeypatch.chdir(tmp_path)  # were one accepted, its default run or results folder lands here
    filled = [a.format(spec=spec_file, run=tmp_path, out=tmp_path / "out") for a in args]
    result = runner.invoke(app, filled)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: --") and line in result.stderr and result.stderr.count("\n") == 1, (
        result.stderr
    )
    assert result.stdout == "" and not any(tmp_path.glob("out*"))  # refused before any work


def test_every_int_or_float_option_has_a_documented_range() -> None:
    """A numeric option added without ``bounded_option`` fails here (comma lists: above)."""
    import inspect as inspect_module
    import types
    import typing

    from typer.models import OptionInfo

    commands = list(app.registered_commands)
    for group in app.registered_groups:
        commands += group.typer_instance.registered_commands  # type: ignore[union-attr]
    numeric = []
    for registered in commands:
        function = inspect_module.unwrap(registered.callback)
        for name, hint in typing.get_type_hints(function, include_extras=True).items():
            infos = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, OptionInfo)]
            base = typing.get_args(hint)[0] if infos else hint
            kinds = set(typing.get_args(base)) - {type(None)} if isinstance(base, types.UnionType) else {base}
            if infos and kinds & {int, float}:
                numeric.append(name)
                assert infos[0].parser is not None and ".." in str(infos[0].metavar), f"{registered.name} {name}"
    assert {
        "micro_shards",
        "recalibrate_bn",
        "naive_max_gib",
        "repeats",
        "batch",
        "target_segments",
        "matmul_size",
    } <= set(numeric)


def test_train_refuses_more_micro_shards_than_a_batch_has_examples(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(tiny_spec_yaml(batch_size=16))
    result = runner.invoke(app, ["train", str(spec), "-o", str(tmp_path / "run"), "--micro-shards", "17"])
    assert result.exit_code == 2
    assert (
        result.stderr == f"error: --micro-shards: 17 is more than train.batch_size 16 of {spec}; "
        "give 0 to 16 (each micro-shard holds at least one example of the batch)\n"
    )
    assert not (tmp_path / "run").exists()


def test_train_takes_the_fast_step_unless_exact_is_asked_and_run_json_says_which(tmp_path: Path) -> None:
    """Exactness is a choice: no flag, the plain step (micro-shards 0); --exact, the default count
    of micro-shards; run.json records both fields and summary.json the step each phase took."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text(tiny_spec_yaml(epochs=1))
    for name, flags, micro_shards, step in (("fast", [], 0, "plain"), ("exact", ["--exact"], 8, "exact")):
        args = ["train", str(spec), "-o", str(tmp_path / name), "--device", "cpu", "--mode", "uhn", *flags]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        info = json.loads((tmp_path / name / "run.json").read_text())
        assert (info["micro_shards"], info["exact"]) == (micro_shards, bool(micro_shards))
        assert json.loads((tmp_path / name / "summary.json").read_text())["train_step"] == {"uhn": step}


def test_exact_and_micro_shards_combine_and_a_contradiction_or_a_resume_is_refused(tmp_path: Path) -> None:
    from uhn_cli.train_commands import chosen_micro_shards

    assert chosen_micro_shards(False, None) is None and chosen_micro_shards(False, 0) == 0
    assert chosen_micro_shards(True, None) == 8 and chosen_micro_shards(True, 4) == 4
    spec = tmp_path / "tiny.yaml"
    spec.write_text(tiny_spec_yaml())
    refused = runner.invoke(app, ["train", str(spec), "-o", str(tmp_path / "run"), "--exact", "--micro-shards", "0"])
    assert refused.exit_code == 2 and refused.stderr.startswith("error: --exact --micro-shards 0: ")
    assert not (tmp_path / "run").exists()
    resumed = runner.invoke(app, ["train", "--resume", str(tmp_path / "run"), "--exact"])
    assert resumed.exit_code == 2 and "--exact" in resumed.stderr
