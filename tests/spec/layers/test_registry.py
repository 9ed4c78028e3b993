"""Every registered layer kind has its property test."""

from pathlib import Path

from tests.conftest import REPO_ROOT
from uhn_spec.layers import REGISTRY

HERE = Path(__file__).parent


def test_every_registered_kind_has_a_property_test() -> None:
    missing = []
    for kind in REGISTRY:
        test_file = HERE / f"test_{kind}.py"
        if not test_file.is_file() or "check_layer_properties" not in test_file.read_text():
            missing.append(f"{kind} (expected {test_file.relative_to(REPO_ROOT)})")
    assert not missing, "layer kinds without a property test: " + ", ".join(missing)


def test_all_seven_paper_kinds_are_registered() -> None:
    assert set(REGISTRY) >= {"linear", "conv2d", "gcn", "gat", "embedding", "mha", "kan"}
