"""Recursive generation (issue 13): exact counts of the paper's chain, gradients through the
chain, the fast generated generator against its target module run the direct way, resume
and export of a tiny recursive run."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from tests.conftest import REPO_ROOT, KillAfter, RunInterrupted
from tests.tiny_specs import tiny_spec_data
from uhn_cli.main import app
from uhn_runtime.io.export import export_levels, level_path, load_exported
from uhn_runtime.model.generated_generator import GeneratedGenerator
from uhn_runtime.model.generator import count_generator_params
from uhn_runtime.model.init_targets import InitTargets
from uhn_runtime.model.target import DeviceTarget
from uhn_runtime.model.weights import RecursiveSource, depth_lr_scale, head_components, make_source
from uhn_runtime.train.init_phase import run_top_down_init, stage_lr_scale, top_down_stages
from uhn_runtime.train.optim import Stepper, make_adamw
from uhn_runtime.train.precision import Precision
from uhn_runtime.train.run import TrainOptions, resume_run, start_run
from uhn_runtime.train.run_dir import RunDir
from uhn_runtime.train.step_bound import LevelChangeBound, relative_changes
from uhn_spec import build_model
from uhn_spec.errors import SpecError
from uhn_spec.modes.recursive import compile_recursive, load_recursive, recursive_from_text
from uhn_tools.bench import BenchOptions, run_bench

SPECS = REPO_ROOT / "specs"
TINY_ROOT = {
    "index_freqs": 16,
    "hidden": 16,
    "blocks": 1,
    "structure_encoder": True,
    "structure_freqs": 8,
    "structure_heads": 2,
}


def tiny_recursive_text(depth: int, **train: object) -> str:
    leaf = tiny_spec_data(steps=4, eval_every=2)
    train_section = {
        "steps": 4,
        "warmup": 1,
        "lr": 1e-3,
        "init_steps": 4,
        "init_lr": 1e-3,
        "grad_clip": 0.01,
        "batch_size": 64,
        "seed": 3,
        "eval_every": 2,
    }
    train_section.update(train)
    data = {
        "name": f"tiny_recursive_k{depth}",
        "leaf": leaf,
        "depth": depth,
        "generated": {"hidden_layers": 1},
        "generator": TINY_ROOT,
        "train": train_section,
    }
    return yaml.safe_dump(data, sort_keys=False)


def tiny_recursive_plan(depth: int, **train: object):  # type: ignore[no-untyped-def]
    _, chain = recursive_from_text(tiny_recursive_text(depth, **train))
    return compile_recursive(chain)


def options(**kw: object) -> TrainOptions:
    return TrainOptions(mode="uhn", device="cpu", progress=io.StringIO(), checkpoint_seconds=0.0, **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the paper's chain


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_the_papers_chain_compiles_with_exact_counts_and_descriptors(depth: int) -> None:
    _, chain = load_recursive(SPECS / f"recursive_mnist_k{depth}.yaml")
    plan = compile_recursive(chain)
    assert [t.num_params for t in plan.targets] == [181_121] * depth + [118_282]
    assert plan.recursion_depth == depth and plan.trained_target.name == "mnist_mlp"
    assert count_generator_params(plan.generator) == (181_889, 193_135)
    h1 = plan.targets[0]
    # The authors' 8-field global vector [6, 4, 22, 11, 0, 0, 32, 1024], as global + task.
    assert h1.global_row.tolist() == [6, 11, 0, 0, 32, 1024] and h1.task_row.tolist() == [4, 22]
    assert [layer.kind for layer in h1.spec.layers] == ["mha"] + ["linear"] * 10
    assert h1.local_rows[4, -1] == 1  # layer 4 is zero-initialised (initialization_type ZERO)
    zero = {p.name for p in h1.params if p.init_std == 0 and p.layer == 4}
    assert zero == {"layers.4.weight", "layers.4.bias"}


def test_inspect_lists_the_generated_generators_first_then_the_leaf() -> None:
    result = CliRunner().invoke(app, ["inspect", str(SPECS / "recursive_mnist_k2.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    names = [(t["name"], t["family"], t["num_params"]) for t in summary["targets"]]
    assert names == [
        ("recursive_mnist_k2_h1", "uhn", 181_121),
        ("recursive_mnist_k2_h2", "uhn", 181_121),
        ("mnist_mlp", "mlp", 118_282),
    ]
    assert summary["generator_params"] == {"trainable": 181_889, "total": 193_135}
    assert summary["depth"] == 2


def test_a_root_without_structure_encoder_is_refused_in_one_line(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(tiny_recursive_text(1).replace("structure_encoder: true", "structure_encoder: false"))
    result = CliRunner().invoke(app, ["validate", str(spec)])
    assert result.exit_code == 2
    assert result.output.strip().startswith(f"error: {spec}: generator.structure_encoder: must be true")
    with pytest.raises(SpecError, match="leaf"):
        recursive_from_text(tiny_recursive_text(1).replace("in_features: 12", "in_features: 13", 1))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("depth: 1", "depth: 1\nlaef: x.yaml"), "laef: unknown field; allowed here: name, description, leaf, depth"),
        (("hidden_layers: 1", "layers: 1"), "generated.layers: unknown field; allowed here: hidden_layers, slope"),
        (("depth: 1", "depth: -1"), "depth: Input should be greater than or equal to 0"),
    ],
)
def test_recursive_spec_errors_name_the_field(change: tuple[str, str], message: str) -> None:
    with pytest.raises(SpecError) as caught:
        recursive_from_text(tiny_recursive_text(1).replace(*change), Path("r.yaml"))
    assert str(caught.value).startswith(f"r.yaml: {message}")


def test_a_missing_leaf_file_is_named_under_leaf(tmp_path: Path) -> None:
    spec = tmp_path / "r.yaml"
    spec.write_text("name: r\nleaf: nowhere.yaml\ndepth: 1\ntrain: {steps: 2, warmup: 0}\n")
    with pytest.raises(SpecError, match=r"r.yaml: leaf: spec file not found: .*nowhere.yaml"):
        load_recursive(spec)


# --------------------------------------------------------------------------- schedules


def test_top_down_init_gives_each_level_its_share_of_the_steps_in_order() -> None:
    stages = top_down_stages(10, 2)
    assert [list(s) for s in stages] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    for step in range(9):  # active level min(K, step // S_lvl)
        assert step in stages[min(2, step // 3)]
    assert [stage_lr_scale(1, level) for level in range(2)] == [1.0, 1.0]
    assert [stage_lr_scale(3, level) for level in range(4)] == [0.2, 0.2, 0.1, 0.025]
    assert [depth_lr_scale(k) for k in range(5)] == [1.0, 1.0, 0.5, 0.125, 0.125]


# --------------------------------------------------------------------------- the runtime


def _source(depth: int) -> RecursiveSource:
    plan = tiny_recursive_plan(depth)
    source = make_source("uhn", plan, DeviceTarget(plan.trained_target), seed=0)
    assert isinstance(source, RecursiveSource)
    return source


def test_gradients_reach_h0_through_the_chain_finite_and_non_zero() -> None:
    torch.manual_seed(0)
    source = _source(depth=2)
    flat = source.flat()
    assert flat.shape == (source.target.num_params,)
    (flat * torch.randn_like(flat)).sum().backward()
    g = source.generator
    for name, param in g.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    # Every part of H0 that the weights depend on at the start gets a gradient (the structure
    # path's inner layers sit behind its zero-initialised head, as in the paper).
    for module in (g.index_in, *g.blocks, g.out, g.structure.head):
        for name, param in module.named_parameters():
            assert param.grad.abs().sum() > 0, name


def test_calibration_scales_each_generated_tensor_and_the_next_level_to_their_init_std() -> None:
    torch.manual_seed(0)
    source = _source(depth=2)
    above, below = (InitTargets(source.levels[k].plan, torch.device("cpu")) for k in (0, 1))
    with torch.no_grad():
        before = source.level_flats(1)[0]
        factor = source.calibrate(1, below)
        after = source.level_flats()
    # H1's tensors have their target std, but for the head, scaled by the factor.
    _, std = above.stats(after[0])
    head = head_components(source.levels[0].plan, above)
    expected = above.std.clone()
    expected[head] *= factor
    wanted = (above.std > 0) & (above.counts > 1)
    torch.testing.assert_close(std[wanted], expected[wanted], rtol=1e-4, atol=1e-7)
    zero_target = above.std == 0  # tensors whose target std is 0 keep what H0 generates
    seg = above.segment
    torch.testing.assert_close(after[0][zero_target[seg]], before[zero_target[seg]])
    _, std = below.stats(after[1])
    wanted = (below.std > 0) & (below.counts > 1)
    assert float(torch.median(std[wanted] / below.std[wanted])) == pytest.approx(1.0, rel=1e-4)
    mean, _ = below.stats(after[1])
    assert float(torch.median(below.mean - mean)) == pytest.approx(0.0, abs=1e-6)
    # The flats are the weights that run: H1's flat as an ordinary generator gives level 2.
    level = source.levels[1]
    with torch.no_grad():
        again = source.generated[0].generate(after[0], level.index, level.structure_rows)
    torch.testing.assert_close(again, after[1])


def naive_generated(
    h: GeneratedGenerator, flat: torch.Tensor, index_rows: torch.Tensor, structure_rows: torch.Tensor
) -> torch.Tensor:
    """The generated generator as an ordinary module run the direct way: H_k's target model
    with ``flat`` loaded, over materialised Fourier features of every index row."""
    model = build_model(h.target.plan.spec)
    model.load_state_dict(h.target.params_from_flat(flat))
    layers, split, root = model.layers, h.split, h.root
    s = root.structure.fourier(structure_rows).unsqueeze(0)
    for layer in layers[:split]:
        s = layer(s, h.ctx)
    x = root.index_fourier(index_rows)
    for layer in layers[split:-1]:
        x = layer(x, h.ctx)
    return layers[-1](x + s, h.ctx).squeeze(-1)


def test_k1_chain_with_fixed_h1_weights_matches_h1_as_an_ordinary_generator() -> None:
    torch.manual_seed(0)
    source = _source(depth=1)
    with torch.no_grad():
        h1_weights = source.level_flats(1)[0] * 0.1  # a scale at which the leaf's weights are moderate
    leaf = source.levels[-1]
    chained = source.generated[0].generate(h1_weights, leaf.index, leaf.structure_rows)
    ordinary = naive_generated(source.generated[0], h1_weights, leaf.plan.index_rows(), leaf.structure_rows)
    assert chained.shape == ordinary.shape == (leaf.num_params,)
    torch.testing.assert_close(chained, ordinary, rtol=1e-4, atol=1e-4)
    # And the backward through the fast path gives the module's gradients w.r.t. H1's weights.
    probe = torch.randn_like(chained)
    fast_weights = h1_weights.clone().requires_grad_()
    (source.generated[0].generate(fast_weights, leaf.index, leaf.structure_rows) * probe).sum().backward()
    direct_weights = h1_weights.clone().requires_grad_()
    naive = _naive_with_grad(source.generated[0], direct_weights, leaf.plan.index_rows(), leaf.structure_rows)
    (naive * probe).sum().backward()
    torch.testing.assert_close(fast_weights.grad, direct_weights.grad, rtol=1e-3, atol=1e-4)


def _naive_with_grad(
    h: GeneratedGenerator, flat: torch.Tensor, index_rows: torch.Tensor, structure_rows: torch.Tensor
) -> torch.Tensor:
    """``naive_generated`` with the weights as views of ``flat`` (gradients reach it)."""
    model = build_model(h.target.plan.spec)
    views = h.target.params_from_flat(flat)

    def run(layer_index: int, x: torch.Tensor) -> torch.Tensor:
        prefix = f"layers.{layer_index}."
        tensors = {name[len(prefix) :]: v for name, v in views.items() if name.startswith(prefix)}
        return torch.func.functional_call(model.layers[layer_index], tensors, (x, h.ctx))

    s = h.root.structure.fourier(structure_rows).unsqueeze(0)
    for i in range(h.split):
        s = run(i, s)
    x = h.root.index_fourier(index_rows)
    last = len(model.layers) - 1
    for i in range(h.split, last):
        x = run(i, x)
    return run(last, x + s).squeeze(-1)


# --------------------------------------------------------------------------- runs


def test_tiny_k1_run_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path: Path) -> None:
    plan = tiny_recursive_plan(1, steps=6, eval_every=2)
    whole = start_run(plan, tmp_path / "whole", options())
    assert whole["depth"] == 1 and whole["uhn"] is not None
    with pytest.raises(RunInterrupted):
        start_run(plan, tmp_path / "killed", options(observers=(KillAfter(3),)))
    resumed = resume_run(tmp_path / "killed", options())
    a = torch.load(tmp_path / "whole" / "checkpoints" / "uhn.pt", weights_only=True)["source"]
    b = torch.load(tmp_path / "killed" / "checkpoints" / "uhn.pt", weights_only=True)["source"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["uhn"] == whole["uhn"]


def test_export_writes_the_leaf_and_each_generated_generator(tmp_path: Path) -> None:
    plan = tiny_recursive_plan(2, steps=2)
    summary = start_run(plan, tmp_path / "run", options())
    out = tmp_path / "leaf.safetensors"
    result = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "-o", str(out), "--levels", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    written = [level_path(out, 1), level_path(out, 2), out]
    assert all(path.is_file() for path in written)
    for path, target in zip(written, plan.targets):
        spec, model = load_exported(path)
        assert spec.name == target.name and sum(p.numel() for p in model.parameters()) == target.num_params
    # The leaf file alone evaluates to the run's own test metric.
    result = CliRunner().invoke(app, ["evaluate", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert f"{summary['uhn']:.4f}" in result.output
    plain = CliRunner().invoke(
        app, ["export", str(tmp_path / "run"), "-o", str(tmp_path / "plain.safetensors"), "--device", "cpu"]
    )
    assert plain.exit_code == 0, plain.output
    assert load_exported(tmp_path / "plain.safetensors")[0].name == plan.trained_target.name
    assert RunDir.open(tmp_path / "run").plan().recursion_depth == 2
    levels = export_levels(RunDir.open(tmp_path / "run"), tmp_path / "again.safetensors", torch.device("cpu"))
    assert len(levels) == 3


def test_bench_compares_the_recursive_train_step_with_k0_in_the_same_run() -> None:
    plan = tiny_recursive_plan(1)
    report = run_bench(plan, BenchOptions(repeats=1, batch=8, square=64))
    assert report["target"] == plan.trained_target.name
    recursion = report["recursion"]
    assert recursion["depth"] == 1
    assert recursion["bound"] == pytest.approx((1 + plan.targets[0].num_params / plan.targets[1].num_params) * 1.3)
    assert recursion["train_step_vs_k0"] == pytest.approx(
        report["train_step"]["seconds"] / recursion["k0_train_step_seconds"]
    )
    assert report["naive"] is None and "recursive" in report["naive_skipped"]


# --------------------------------------------------------------------------- the bounded step


def test_level_change_bound_keeps_every_level_within_it_and_keeps_adams_direction() -> None:
    """A plain Adam step at a large lr moves the generated levels by more than the bound; the
    bounded step shortens it (along the same direction) until each level's relative change
    is within the bound, measured on the levels generated afterwards."""
    torch.manual_seed(0)
    bound = 0.01
    changes, moves = {}, {}
    for bounded in (False, True):
        source = _source(depth=2)
        start = [p.detach().clone() for p in source.parameters()]
        limit = LevelChangeBound(source, bound, Precision("cpu", None))
        before = limit.measure()
        stepper = Stepper(
            make_adamw(source.parameters(), 0.05), Precision("cpu", None), bound=limit if bounded else None
        )
        flat = source.flat()
        stepper.step((flat * torch.randn(flat.shape, generator=torch.Generator().manual_seed(1))).sum())
        changes[bounded] = relative_changes(before, limit.measure())
        moves[bounded] = torch.cat([(p.detach() - s).reshape(-1) for p, s in zip(source.parameters(), start)])
        if bounded:
            assert 0 < limit.last_scale < 1 and limit.last_change == pytest.approx(max(changes[True]), rel=1e-5)
    assert len(changes[True]) == 3  # H1, H2 and the leaf
    assert max(changes[False]) > bound
    assert max(changes[True]) <= bound
    cosine = torch.nn.functional.cosine_similarity(moves[True], moves[False], dim=0)
    assert float(cosine) > 0.9999


def test_a_run_with_the_bound_resumes_exactly_and_differs_from_the_plain_step(tmp_path: Path) -> None:
    plan = tiny_recursive_plan(1, steps=6, eval_every=2, lr=1e-2, init_lr=1e-2, level_change_bound=0.002)
    whole = start_run(plan, tmp_path / "whole", options())
    with pytest.raises(RunInterrupted):
        start_run(plan, tmp_path / "killed", options(observers=(KillAfter(3),)))
    resumed = resume_run(tmp_path / "killed", options())
    start_run(tiny_recursive_plan(1, steps=6, eval_every=2, lr=1e-2, init_lr=1e-2), tmp_path / "plain", options())
    a, b, plain = (
        torch.load(tmp_path / run / "checkpoints" / "uhn.pt", weights_only=True)["source"]
        for run in ("whole", "killed", "plain")
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["uhn"] == whole["uhn"]
    assert not all(torch.equal(a[k], plain[k]) for k in a)


def test_the_bound_is_refused_for_a_run_that_generates_several_targets(tmp_path: Path) -> None:
    spec = tmp_path / "family.yaml"
    text = (SPECS / "digits_mlp_family.yaml").read_text()
    spec.write_text(text)
    result = CliRunner().invoke(
        app,
        ["train", str(spec), "-o", str(tmp_path / "run"), "--device", "cpu", "--set", "train.level_change_bound=0.01"],
    )
    assert result.exit_code == 2
    assert "train.level_change_bound" in result.output and "family" in result.output


def test_standardized_levels_have_their_init_statistics_whatever_h0_generates() -> None:
    """train.level_norm: standardize pins every generated generator tensor to its init mean
    and std (zero-initialised and one-element tensors left as generated), so a level's scale
    cannot run away however H0 moves; gradients still reach H0."""
    torch.manual_seed(0)
    plan = tiny_recursive_plan(2, level_norm="standardize")
    source = make_source("uhn", plan, DeviceTarget(plan.trained_target), seed=0)
    with torch.no_grad():
        for p in source.generator.out.parameters():
            p.mul_(37.0)  # H0's output far from any init scale
    flats = source.level_flats()
    for k in range(2):
        stats = InitTargets(source.levels[k].plan, torch.device("cpu"))
        mean, std = stats.stats(flats[k])
        kept = (stats.std > 0) & (stats.counts > 1)
        torch.testing.assert_close(std[kept], stats.std[kept], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(mean[kept], stats.mean[kept], rtol=1e-4, atol=1e-4)
    raw = source.levels[0].generate(source.generator)
    left = ~(InitTargets(source.levels[0].plan, torch.device("cpu")).std > 0)
    seg = InitTargets(source.levels[0].plan, torch.device("cpu")).segment
    torch.testing.assert_close(flats[0][left[seg]], raw[left[seg]].float())
    (flats[-1] * torch.randn_like(flats[-1])).sum().backward()
    grads = [p.grad for p in source.generator.out.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_centered_standardization_also_holds_unspread_tensors_at_their_init_mean() -> None:
    """train.level_norm: standardize_centered pins what `standardize` pins, and shifts every
    zero-initialised tensor to its init mean (its spread still free) and holds every
    one-element tensor (a generator's head bias, which moves the whole level below it) at
    its init value, whatever H0 generates."""
    torch.manual_seed(0)
    plan = tiny_recursive_plan(2, level_norm="standardize_centered")
    source = make_source("uhn", plan, DeviceTarget(plan.trained_target), seed=0)
    with torch.no_grad():
        for p in source.generator.out.parameters():
            p.add_(0.5).mul_(4.0)  # H0's output far from any init mean or scale
    flats = source.level_flats()
    for k in range(2):
        stats = InitTargets(source.levels[k].plan, torch.device("cpu"))
        mean, std = stats.stats(flats[k])
        spread = (stats.std > 0) & (stats.counts > 1)
        assert bool((~spread).any()), "the tiny generator should have unspread tensors to pin"
        torch.testing.assert_close(mean, stats.mean, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(std[spread], stats.std[spread], rtol=1e-4, atol=1e-6)
        zero_init = (stats.std == 0) & (stats.counts > 1)
        assert bool((std[zero_init] > 1e-3).all()), "a zero-initialised tensor keeps its spread"
    (flats[-1] * torch.randn_like(flats[-1])).sum().backward()
    grads = [p.grad for p in source.generator.out.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_calibrate_only_init_gives_h1_every_step_and_starts_the_leaf_at_its_init_scale() -> None:
    """train.init_deep_levels: calibrate: every init step matches H1's statistics, and each
    level below is only calibrated (the leaf's median std / target std is then 1)."""
    torch.manual_seed(0)
    source = _source(depth=2)
    steps_seen: list[int] = []
    h1_losses: list[float] = []
    h1 = InitTargets(source.levels[0].plan, torch.device("cpu"))

    def on_step(step: int, loss: float, lr: float) -> None:
        steps_seen.append(step)
        with torch.no_grad():
            h1_losses.append(float(h1.loss(source.level_flats(1)[0])))

    gains_before = source.gains(1).clone()
    final = run_top_down_init(source, 5, 1e-3, Precision("cpu", None), "none", on_step, deep_levels="calibrate")
    assert steps_seen == [0, 1, 2, 3, 4]
    assert h1_losses[-1] < h1_losses[0]  # the steps went to H1's statistics
    assert not torch.equal(source.gains(1), gains_before)  # H2 calibrated before the leaf
    leaf = InitTargets(source.levels[-1].plan, torch.device("cpu"))
    with torch.no_grad():
        _, std = leaf.stats(source.flat())
        assert final == pytest.approx(float(leaf.loss(source.flat())), rel=1e-5)
    wanted = (leaf.std > 0) & (leaf.counts > 1)
    assert float(torch.median(std[wanted] / leaf.std[wanted])) == pytest.approx(1.0, rel=1e-4)
