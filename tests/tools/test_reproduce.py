"""`uhn reproduce`: a tiny table through the harness -- resumable runs, the direct lr chosen
on the validation split, the Interface's JSON fields, the markdown table, progress and ETA."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import REPO_ROOT, KillAfter, RunInterrupted
from tests.tiny_specs import tiny_spec_yaml
from uhn_cli.main import app
from uhn_runtime.train.optim import TrainingDiverged
from uhn_runtime.train.run_dir import RunDir
from uhn_spec import load_spec
from uhn_tools.reproduce import Harness, ReproduceOptions, TableError, load_table, write_results
from uhn_tools.reproduce.report import Eta
from uhn_tools.reproduce.sweep import EDGE_STEPS, past_the_edge
from uhn_tools.reproduce.tables import BUILTIN_TABLES

REPO = REPO_ROOT
runner = CliRunner()

# The fields outside checks read (issue 16, Interface).
INTERFACE_FIELDS = {"row", "dataset", "model", "metric", "uhn", "direct", "paper", "command"}


def write_table(folder: Path) -> Path:
    """Two tiny rows on synthetic data (one with a direct-lr grid, two seeds) and a note row."""
    (folder / "a.yaml").write_text(tiny_spec_yaml("image_classification", epochs=2))
    (folder / "b.yaml").write_text(tiny_spec_yaml("formula_regression", epochs=2))
    both = lambda seeds, est=None: {  # noqa: E731
        "cpu": {"set": ["train.epochs=2"], "changes": "2 epochs", "seeds": seeds, "estimate_seconds": est},
        "paper": {"set": [], "changes": "the spec", "seeds": [1]},
    }
    table = {
        "name": "tiny",
        "title": "Tiny table",
        "rows": [
            {"name": "tiny_a", "dataset": "synthetic", "model": "MLP", "metric": "accuracy", "spec": "a.yaml",
             "budgets": both([1, 2], 1.0), "paper": {"uhn": 0.9, "direct": 0.91}, "direct_lr_grid": [1e-3, 1e-2]},
            {"name": "tiny_b", "dataset": "synthetic", "model": "MLP", "metric": "rmse", "spec": "b.yaml",
             "budgets": both([1])},
            {"name": "absent", "dataset": "pubmed", "model": "GCN", "metric": "accuracy", "note": "no data here",
             "paper": {"uhn": 0.78}},
        ],
    }  # fmt: skip
    path = folder / "table.yaml"
    path.write_text(yaml.safe_dump(table))
    return path


def harness(tmp_path: Path, **options) -> tuple[Harness, io.StringIO]:  # type: ignore[no-untyped-def]
    table, root = load_table(str(write_table(tmp_path)))
    shown = io.StringIO()
    return Harness(table, root, ReproduceOptions(out=tmp_path / "out", device="cpu", progress=shown, **options)), shown


def test_a_table_runs_every_row_and_writes_the_interface_json_and_markdown(tmp_path: Path) -> None:
    h, shown = harness(tmp_path)
    h.run()
    json_path, md_path, missing = write_results(h, tmp_path / "results", "uhn reproduce table.yaml --budget cpu")
    assert missing == []
    rows = json.loads(json_path.read_text())
    assert [r["row"] for r in rows] == ["tiny_a", "tiny_b", "absent"]
    for record in rows:
        assert INTERFACE_FIELDS <= set(record)
    a, b, absent = rows
    summaries = [RunDir(tmp_path / "out/tiny/cpu/tiny_a" / f"seed_{s}").summary() for s in (1, 2)]
    assert a["uhn"]["seeds"] == a["direct"]["seeds"] == 2
    assert a["uhn"]["mean"] == pytest.approx(sum(s["uhn"] for s in summaries) / 2)  # type: ignore[index]
    assert a["direct"]["std"] is not None and b["uhn"]["std"] is None  # one seed: no spread
    assert a["paper"] == {"uhn": 0.9, "direct": 0.91} and b["paper"] == {"uhn": None, "direct": None}
    assert a["metric"] == "accuracy" and b["metric"] == "rmse"
    assert absent["uhn"] is None and absent["direct"] is None and absent["note"] == "no data here"
    # The row's command is the `uhn train` line of its first seed, with the lr chosen on val.
    lr = a["direct_lr"]
    assert {"0.001", "0.01"} <= set(lr["val"]) and lr["value"] == float(max(lr["val"], key=lr["val"].get))
    assert a["command"].startswith("uhn train ") and f"train.direct_lr={lr['value']!r}" in a["command"]
    assert "--mode both" in a["command"] and "train.seed=1" in a["command"]
    assert b["direct_lr"]["val"] is None  # no grid: the row's rule
    markdown = md_path.read_text()
    assert "| tiny_a | accuracy |" in markdown and "± " in markdown and "0.9000 / 0.9100" in markdown
    assert "absent: no data here" in markdown and "UHN RMSE at or below direct on" in markdown
    assert "Runs on " in markdown and "thread(s) per run; load average" in markdown
    folders = (tmp_path / "out/tiny/cpu").glob("*/seed_*")
    precisions = sorted({RunDir(folder).summary()["precision"] for folder in folders})  # type: ignore[index]
    # auto differs by machine and task kind: the table says which precisions its runs used
    assert f"; precision {', '.join(precisions)}; " in markdown
    text = shown.getvalue()
    assert "[1/3] tiny_a seed 1" in text and "[3/3] tiny_b seed 1" in text and "ETA" in text
    assert "3 runs to train and 2 direct-lr sweep runs (not in the ETA)" in text  # tiny_a's grid


def test_a_best_lr_on_the_grid_edge_is_followed_past_it() -> None:
    grid = [1e-3, 3e-3, 1e-2]
    assert past_the_edge(grid, {"0.001": 0.90, "0.003": 0.95, "0.01": 0.93}, "accuracy") == []  # inside: done
    assert past_the_edge(grid, {"0.001": 0.90, "0.003": 0.92, "0.01": 0.95}, "accuracy") == [0.0333]
    assert past_the_edge(grid, {"0.001": 0.01, "0.003": 0.02, "0.01": 0.03}, "rmse") == [0.000333]
    # Past the edge the search goes on while it improves, at most EDGE_STEPS lrs per side.
    further = {"0.001": 0.90, "0.003": 0.92, "0.01": 0.95, "0.0333": 0.96}
    assert past_the_edge(grid, further, "accuracy") == [0.111]
    rising = {"1e-06": 0.1, "1e-05": 0.2, "0.0001": 0.3, "0.001": 0.4, "0.01": 0.5}
    assert past_the_edge([1e-6, 1e-5], rising, "accuracy") == [0.1]
    assert EDGE_STEPS == 4 and past_the_edge([1e-6, 1e-5], {**rising, "0.1": 0.6}, "accuracy") == []
    # A diverged lr (None) closes its side: the best below it is inside what was tried.
    assert past_the_edge(grid, {"0.001": 0.90, "0.003": 0.92, "0.01": 0.95, "0.0333": None}, "accuracy") == []


def test_a_diverging_lr_is_recorded_and_the_sweep_chooses_among_the_others(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    h, shown = harness(tmp_path, rows=("tiny_b",))
    train_folder = h.train_folder

    def diverges_at_lr_one(spec_path, overrides, folder, mode):  # type: ignore[no-untyped-def]
        if "train.direct_lr=1.0" in overrides:
            raise TrainingDiverged("loss became nan at step 3")
        return train_folder(spec_path, overrides, folder, mode)

    monkeypatch.setattr(h, "train_folder", diverges_at_lr_one)
    chosen = h.direct_lr(h.table.row("tiny_b").model_copy(update={"direct_lr_grid": [1e-2, 1.0]}))
    assert chosen.val["1.0"] is None and "direct lr 1.0: diverged (loss became nan at step 3)" in shown.getvalue()
    assert chosen.value < 1.0 and chosen.val[repr(chosen.value)] is not None
    # The spec's bound caps the search past the top edge.
    assert past_the_edge([0.1, 0.5], {"0.1": 0.5, "0.5": 0.9}, "accuracy") == [1.0]
    assert past_the_edge([0.1, 0.5], {"0.1": 0.5, "0.5": 0.8, "1.0": 0.9}, "accuracy") == []


def test_the_direct_lr_is_chosen_on_the_validation_split_once(tmp_path: Path) -> None:
    h, shown = harness(tmp_path, rows=("tiny_a",), seeds=(1,))
    h.run()
    chosen = json.loads((tmp_path / "out/tiny/cpu/tiny_a/direct_lr.json").read_text())
    best = max(chosen["val"], key=lambda k: chosen["val"][k])
    assert chosen["value"] == float(best)
    sweep = RunDir(tmp_path / "out/tiny/cpu/tiny_a/direct_lr" / f"lr_{best}").info()
    assert sweep["mode"] == "direct" and "task.validate_split=true" in sweep["overrides"]
    again, shown_again = harness(tmp_path, rows=("tiny_a",), seeds=(1,))
    again.run()
    assert "validation split" not in shown_again.getvalue()  # kept, not swept again


def test_seeds_run_apart_share_the_row_s_direct_lr_choice(tmp_path: Path) -> None:
    # A row's seeds split over two processes (--seeds 2, then --seeds 1): one sweep, under the
    # first seed of the row's budget, which the second sitting reads back.
    later_seed, _ = harness(tmp_path, rows=("tiny_a",), seeds=(2,))
    later_seed.run()
    chosen = json.loads((tmp_path / "out/tiny/cpu/tiny_a/direct_lr.json").read_text())
    assert chosen["seed"] == 1 and "seed 1, same budget" in chosen["how"]
    first_seed, shown = harness(tmp_path, rows=("tiny_a",), seeds=(1,))
    first_seed.run()
    assert "validation split" not in shown.getvalue() and "[1/1] tiny_a seed 1" in shown.getvalue()


def test_a_killed_row_resumes_and_finished_rows_are_skipped(tmp_path: Path) -> None:
    killed, _ = harness(tmp_path, rows=("tiny_b",), observers=(KillAfter(1),))
    with pytest.raises(RunInterrupted):
        killed.run()
    folder = tmp_path / "out/tiny/cpu/tiny_b/seed_1"
    assert RunDir(folder).info_path.is_file() and RunDir(folder).summary() is None
    resumed, shown = harness(tmp_path, rows=("tiny_b",))
    resumed.run()
    assert f"resuming the killed run in {folder}" in shown.getvalue()
    # The resumed run ends where an uninterrupted one does.
    (tmp_path / "fresh").mkdir()
    fresh, _ = harness(tmp_path / "fresh", rows=("tiny_b",))
    fresh.run()
    summary, uninterrupted = RunDir(folder).summary(), RunDir(tmp_path / "fresh/out/tiny/cpu/tiny_b/seed_1").summary()
    assert (summary["uhn"], summary["direct"]) == (uninterrupted["uhn"], uninterrupted["direct"])  # type: ignore[index]
    written = (folder / "summary.json").stat().st_mtime_ns
    skipped, shown = harness(tmp_path, rows=("tiny_b",))
    skipped.run()
    assert "tiny_b seed 1: finished earlier, skipped" in shown.getvalue() and "0 runs to train" in shown.getvalue()
    assert (folder / "summary.json").stat().st_mtime_ns == written


def test_rows_not_run_yet_are_left_out_and_counted(tmp_path: Path) -> None:
    h, _ = harness(tmp_path, rows=("tiny_b",))
    h.run()
    said: list[str] = []
    json_path, md_path, missing = write_results(h, tmp_path / "results", "uhn reproduce t", said.append)
    assert missing == ["tiny_a"]
    assert [r["row"] for r in json.loads(json_path.read_text())] == ["tiny_b", "absent"]
    assert "Not run yet (1 rows, left out above): tiny_a." in md_path.read_text()
    assert "1 rows missing (tiny_a)" in said[0]


def test_rows_of_an_earlier_sitting_stay_when_their_run_folders_are_gone(tmp_path: Path) -> None:
    # A fresh clone has the committed results file but not the run folders behind it.
    first, _ = harness(tmp_path, rows=("tiny_b",))
    first.run()
    json_path, _, _ = write_results(first, tmp_path / "results", "uhn reproduce t")
    kept = next(r for r in json.loads(json_path.read_text()) if r["row"] == "tiny_b")
    shutil.rmtree(tmp_path / "out")
    later, _ = harness(tmp_path, rows=("tiny_a",), seeds=(1,))
    later.run()
    _, md_path, missing = write_results(later, tmp_path / "results", "uhn reproduce t")
    rows = {r["row"]: r for r in json.loads(json_path.read_text())}
    assert missing == [] and rows["tiny_b"] == kept and rows["tiny_a"]["uhn"]["seeds"] == 1
    assert "| tiny_b | rmse |" in md_path.read_text()


def test_an_earlier_record_at_a_direct_lr_the_sweep_no_longer_chooses_does_not_stand_in(tmp_path: Path) -> None:
    h, _ = harness(tmp_path, rows=("tiny_a",), seeds=(1,))
    h.run()
    write_results(h, tmp_path / "results", "uhn reproduce t")
    chosen_path = tmp_path / "out/tiny/cpu/tiny_a/direct_lr.json"
    chosen = json.loads(chosen_path.read_text())
    chosen_path.write_text(json.dumps({**chosen, "value": chosen["value"] / 10}))  # a newer sweep's choice
    shutil.rmtree(tmp_path / "out/tiny/cpu/tiny_a/seed_1")  # the stale run, moved away to retrain
    again, _ = harness(tmp_path, rows=("tiny_a",), seeds=(1,))
    json_path, _, missing = write_results(again, tmp_path / "results", "uhn reproduce t")
    assert "tiny_a" in missing and "tiny_a" not in [r["row"] for r in json.loads(json_path.read_text())]


def test_a_damaged_results_file_is_named_not_overwritten(tmp_path: Path) -> None:
    h, _ = harness(tmp_path, rows=("tiny_b",))
    h.run()
    json_path = tmp_path / "results" / "tiny_cpu.json"
    json_path.parent.mkdir()
    json_path.write_text("{not json")
    with pytest.raises(TableError, match="tiny_cpu.json: not a results file"):
        write_results(h, tmp_path / "results", "uhn reproduce t")
    assert json_path.read_text() == "{not json"


def test_a_run_folder_of_other_settings_is_refused(tmp_path: Path) -> None:
    h, _ = harness(tmp_path, rows=("tiny_b",))
    h.run()
    other, _ = harness(tmp_path, rows=("tiny_b",), budget="paper")
    other.folder = h.folder  # the same folders, other overrides
    with pytest.raises(TableError, match="holds a run of other settings"):
        other.run()


def edit_spec(path: Path, **train: object) -> None:
    spec = yaml.safe_load(path.read_text())
    spec["train"].update(train)
    path.write_text(yaml.safe_dump(spec))


def test_a_run_of_an_edited_spec_is_refused_but_pinning_its_precision_is_not(tmp_path: Path) -> None:
    h, _ = harness(tmp_path, rows=("tiny_b",))
    h.run()
    write_results(h, tmp_path / "results", "uhn reproduce t")  # the earlier file holds tiny_b
    trained_in = RunDir(tmp_path / "out/tiny/cpu/tiny_b/seed_1").summary()["precision"]  # type: ignore[index]
    again, shown = harness(tmp_path, rows=("tiny_b",))
    edit_spec(tmp_path / "b.yaml", precision=trained_in)  # what auto gave the run: the same run
    again.run()
    assert "tiny_b seed 1: finished earlier, skipped" in shown.getvalue()
    edited, _ = harness(tmp_path, rows=("tiny_b",))
    edit_spec(tmp_path / "b.yaml", lr=0.123)
    with pytest.raises(
        TableError, match=r"trained from another version of .*b\.yaml \(train\.lr: .* in the run, 0\.123 now\)"
    ):
        edited.run()
    # The results leave the row out, say why, and do not fall back to an earlier file's figures.
    json_path, md_path, missing = write_results(edited, tmp_path / "results", "uhn reproduce t")
    assert "tiny_b" in missing and "tiny_b" not in [r["row"] for r in json.loads(json_path.read_text())]
    assert "Out of date (1 rows, left out above until retrained):" in md_path.read_text()
    assert "* tiny_b: " in md_path.read_text() and "train.lr" in md_path.read_text()


def test_eta_scales_the_estimates_by_the_measured_pace() -> None:
    eta = Eta()
    for estimate in (10.0, 20.0, None):
        eta.add(estimate)
    assert eta.seconds_left() is None  # a run without an estimate and nothing measured yet
    eta.finish(30.0)  # three times slower than estimated
    assert eta.seconds_left() == pytest.approx(20.0 * 3 + 30.0)
    assert "2 runs left" in eta.line() and "measured pace" in eta.line()


def test_a_resumed_run_sets_the_pace_by_its_whole_training_time(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    h, shown = harness(tmp_path, rows=("tiny_b",), seeds=(1, 2))
    train_folder = h.train_folder

    def resumed_after_1000_s(spec_path, overrides, folder, mode):  # type: ignore[no-untyped-def]
        summary = train_folder(spec_path, overrides, folder, mode)
        return {**summary, "seconds": 1000.0} if "train.seed=1" in overrides else summary

    monkeypatch.setattr(h, "train_folder", resumed_after_1000_s)
    h.run()
    # Seed 1 took a second here (its remainder) but 1,000 s in all: seed 2 is expected to take
    # as long (the row has no estimate, so the mean measured time is the guess).
    assert "[1/2] tiny_b seed 1: uhn" in shown.getvalue()
    assert "(1000 s); ETA 17 min for 1 run left (measured pace)" in shown.getvalue()


def test_the_cli_runs_a_table_file_and_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    table = write_table(tmp_path)
    common = ["--out", str(tmp_path / "out"), "--results", str(tmp_path / "res"), "--device", "cpu"]
    result = runner.invoke(app, ["reproduce", str(table), "--rows", "tiny_b", *common])
    assert result.exit_code == 0, result.output
    assert "1 rows missing (tiny_a)" in result.output
    assert json.loads((tmp_path / "res/tiny_cpu.json").read_text())[0]["row"] == "tiny_b"
    bad = runner.invoke(app, ["reproduce", str(table), "--rows", "nope", *common])
    assert bad.exit_code == 2 and "error: --rows: 'nope' is not a row of tiny" in bad.output
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\ntitle: y\nrows: [{name: r, dataset: d, model: m, metric: accuracy}]\n")
    bad = runner.invoke(app, ["reproduce", str(broken), *common])
    assert bad.exit_code == 2 and "error: " in bad.output and "spec" in bad.output


def test_builtin_tables_cover_the_paper_and_their_budgets_load() -> None:
    table1, root = load_table("table1")
    names = [row.name for row in table1.rows]
    assert len(names) == 26 and sum(n.startswith("kan_") for n in names) == 15
    assert [r.name for r in table1.rows if not r.runnable] == ["pubmed_gcn", "pubmed_gat"]
    assert [r.name for r in load_table("table2")[0].rows] == [f"cifar10_cnn{d}" for d in (20, 32, 44, 56)]
    for name in BUILTIN_TABLES:
        table, root = load_table(name)
        assert root == Path.cwd()  # a built-in table's spec paths: --specs-root, else the current folder
        for row in table.rows:
            if not row.runnable:
                continue
            for budget, plan in row.budgets.items():
                spec = load_spec(REPO / str(row.spec), plan.set)  # every --set names a real field
                assert spec.task.dataset == row.dataset, (name, row.name, budget)
            graph = row.dataset in ("cora", "citeseer")
            assert len(row.budgets["cpu"].seeds) == (3 if graph else 1) or name == "demo"
