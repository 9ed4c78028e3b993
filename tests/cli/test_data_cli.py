"""`uhn data info` and `uhn data fetch` from the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from uhn_cli.main import app

runner = CliRunner()


def test_info_describes_and_counts_a_generated_dataset() -> None:
    result = runner.invoke(app, ["data", "info", "kv"])
    assert result.exit_code == 0, result.output
    assert "formula_regression, metric rmse" in result.output
    assert "train 1000, val none, test 1000" in result.output


def test_info_lists_the_expected_files_without_loading(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "info", "mnist", "--data-root", str(tmp_path), "--no-load"])
    assert result.exit_code == 0, result.output
    assert f"missing  {tmp_path / 'mnist' / 'train-images-idx3-ubyte.gz'}" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["data", "info", "nosuch"], "unknown dataset 'nosuch'"),
        (["data", "fetch", "pubmed"], "cannot fetch pubmed"),
        (["data", "info", "imdb", "--data-root", "{tmp}"], "uhn data fetch imdb"),
    ],
)
def test_errors_are_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, [a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_fetch_of_a_generated_dataset_has_nothing_to_do() -> None:
    result = runner.invoke(app, ["data", "fetch", "jv"])
    assert result.exit_code == 0 and "nothing to download" in result.output
