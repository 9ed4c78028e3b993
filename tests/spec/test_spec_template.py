"""A spec is data, never code: templates render in a sandbox, bounded in time and size, and
include only files inside the spec's folder and the family folder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import uhn_spec.template
from tests.conftest import REPO_ROOT
from uhn_spec import SpecError, load_spec, spec_from_text
from uhn_spec.template import FAMILY_TEMPLATES, render_spec_template


def render_error(text: str, source: Path | None = None) -> str:
    with pytest.raises(SpecError) as caught:
        render_spec_template(text, source)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_template_cannot_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for attack in (
        f"{{{{ cycler.__init__.__globals__.os.system('touch {marker}') }}}}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        f"{{{{ lipsum.__globals__['os'].system('touch {marker}') }}}}",
        "{{ range.__self__ }}",
    ):
        assert "template error" in render_error(f"name: {attack}\n")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("{% for i in range(10**12) %}x{% endfor %}", "Range too big"),
        ("{% for i in range(99999) %}{{ 'x' * 100 }}{% endfor %}", "more than the limit"),
        ("{{ 'x' * 10**10 }}", "more than the limit"),
        ("{% set a = 'x' * 4000000 %}{% set b = a ~ a %}", "concatenation"),
        ("{{ '%999999999d' % 1 }}", "%-formatting"),
        ("{{ '{:>999999999}'.format(1) }}", "str.format"),
        ("{{ 'x' | center(10**9) }}", "filter center"),
        ("{{ 'x'.ljust(10**9) }}", "calling ljust"),
        ("{{ 7 ** 100000 }}", "bits"),
    ],
)
def test_template_size_is_bounded(template: str, fragment: str) -> None:
    assert fragment in render_error(template)


@pytest.mark.parametrize(
    "template",
    [
        "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
        "{% for x in [1] * 4000000 %}{% for y in [1] * 4000000 %}{% endfor %}{% endfor %}",
    ],
)
def test_template_time_is_bounded(template: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uhn_spec.template, "RENDER_SECONDS", 0.5)
    started = time.monotonic()
    assert render_error(f"name: x\n{template}\n").endswith("took longer than 0.5 s; is a loop too long?")
    assert time.monotonic() - started < 30  # generous: the machine may be busy


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (
            "name: x\n{% macro m(a) %}{{ a }}{% endmacro %}\n{{ m(b=1) }}\n",
            "line 3: template error: TypeError: macro 'm' takes no keyword argument 'b'",
        ),
        (
            "name: x\n\nfamily: {{ 32 // 0 }}\n",
            "line 3: template error: ZeroDivisionError: integer division or modulo by zero",
        ),
        ("name: x\n{% if %}\n", "line 2: template syntax error: Expected an expression, got 'end of statement block'"),
        (
            "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
            "line 1: template error: RecursionError: maximum recursion depth exceeded",
        ),
    ],
)
def test_template_runtime_error_names_its_line(template: str, expected: str) -> None:
    # Python may add where the recursion limit hit ("... while calling a Python object").
    assert render_error(template).startswith(expected)


def test_includes_stay_inside_the_spec_folder(tmp_path: Path) -> None:
    folder = tmp_path / "specs"
    folder.mkdir()
    (tmp_path / "secret.yaml").write_text("secret: 1\n")
    (folder / "common.j2").write_text("family: mlp\n")
    (folder / "link.j2").symlink_to(tmp_path / "secret.yaml")
    spec = folder / "spec.yaml"
    assert render_spec_template('{% include "common.j2" %}', spec) == "family: mlp\n"
    for name in ("../secret.yaml", str(tmp_path / "secret.yaml"), "link.j2", "_families/../../secret.yaml"):
        message = render_error(f'{{% include "{name}" %}}', spec)
        assert "includes and imports resolve only inside" in message, message


def test_family_templates_import_from_any_folder(tmp_path: Path) -> None:
    """A spec outside specs/ still imports the families as ``_families/NAME``."""
    shipped = (REPO_ROOT / "specs" / "cifar10_cnn20.yaml").read_text()
    copy = tmp_path / "cnn20.yaml"
    copy.write_text(shipped)
    assert len(load_spec(copy).layers) == 20
    assert (FAMILY_TEMPLATES / "cnn.j2").is_file()


def test_rendering_off_the_main_thread_is_still_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SIGALRM outside the main thread: the per-step checks bound the time."""
    import threading

    monkeypatch.setattr(uhn_spec.template, "RENDER_SECONDS", 0.5)
    errors: list[str] = []

    def render() -> None:
        try:
            render_spec_template("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}", None)
        except SpecError as err:
            errors.append(str(err))

    worker = threading.Thread(target=render)
    worker.start()
    worker.join(timeout=60)
    assert errors and "took longer than" in errors[0]


def test_validate_refuses_a_sandbox_escape_in_a_real_process(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    spec = tmp_path / "evil.yaml"
    spec.write_text(f"name: {{{{ cycler.__init__.__globals__.os.system('touch {marker}') }}}}\n")
    done = subprocess.run(
        [sys.executable, "-m", "uhn_cli", "validate", str(spec)],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ,
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {spec}: line 1: template error: ")
    assert not marker.exists()


def test_shipped_templates_still_render() -> None:
    spec = spec_from_text(
        (REPO_ROOT / "specs" / "cifar10_cnn56.yaml").read_text(), REPO_ROOT / "specs" / "cifar10_cnn56.yaml"
    )
    assert len(spec.layers) == 56
