"""The per-step layout, checked statically in a second: each step's folder holds its
package, its requirements and its Dockerfile; the repository files its component imports
(following imports) are exactly what its Dockerfile copies; its requirements name the
third-party packages those files import and nothing else (plus kfp, the executor); and
the shared modules stay light. tests/integration/test_pipeline_step_images.py then
installs and runs each step as its image would."""

from __future__ import annotations

import ast
import subprocess
import sys
from importlib.metadata import packages_distributions

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pipeline.components import STEPS
from tests.helpers import REPO_ROOT
from tests.step_images import STEPS_DIR, imported_files, read_step_image

COMPONENTS = ast.parse((REPO_ROOT / "pipeline" / "components.py").read_text())


def component_function(step: str) -> ast.FunctionDef:
    """The component's function, whose body is the source KFP ships to the step's image."""
    (function,) = [
        node for node in COMPONENTS.body if isinstance(node, ast.FunctionDef) and node.name == step
    ]
    return function


def third_party(tree: ast.AST, everywhere: bool) -> set[str]:
    """Top-level names of the non-standard, non-repository modules ``tree`` imports: at
    module level only, or ``everywhere`` (function bodies too, which import lazily)."""
    nodes = ast.walk(tree) if everywhere or not isinstance(tree, ast.Module) else tree.body
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"__future__", "pipeline", "predictor"}


def distributions(modules: set[str]) -> set[str]:
    found = packages_distributions()
    return {canonicalize_name(dist) for module in modules for dist in found[module]}


def requirements(step: str) -> list[Requirement]:
    lines = (STEPS_DIR / step / "requirements.txt").read_text().splitlines()
    return [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]


def test_there_is_a_folder_for_each_step_and_no_other() -> None:
    folders = {p.name for p in STEPS_DIR.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == set(STEPS)
    for step in STEPS:
        held = {p.name for p in (STEPS_DIR / step).iterdir() if p.name != "__pycache__"}
        assert held == {"__init__.py", "requirements.txt", "Dockerfile"}, step


@pytest.mark.parametrize("step", STEPS)
def test_the_image_copies_exactly_what_the_component_imports(step: str) -> None:
    image = read_step_image(step)
    assert set(image.files) == imported_files(component_function(step))
    # under the image's import root the files sit where they sit in the repository
    assert all(relative.as_posix() == source for source, relative in image.files.items())


@pytest.mark.parametrize("step", STEPS)
def test_the_requirements_are_the_direct_dependencies_in_ranges(step: str) -> None:
    listed = requirements(step)
    assert not [r for r in listed if any(s.operator in ("==", "===") for s in r.specifier)], (
        "versions are pinned by constraints.txt, not here"
    )
    names = {canonicalize_name(r.name) for r in listed}
    assert "kfp" in names  # KFP's executor runs the function: install_kfp_package=False
    function = component_function(step)
    files = [ast.parse((REPO_ROOT / f).read_text()) for f in imported_files(function)]
    # everything imported when the modules load (and the function runs) must be installed...
    at_import = third_party(function, everywhere=True).union(
        *(third_party(tree, everywhere=False) for tree in files)
    )
    assert distributions(at_import) <= names
    # ...and nothing is listed that no code of the step imports (lazily counts: skops)
    anywhere = set().union(*(third_party(tree, everywhere=True) for tree in files))
    assert names - {"kfp"} <= distributions(anywhere | at_import)


def test_the_shared_modules_and_the_light_steps_import_no_heavy_library() -> None:
    code = (
        "import sys, pipeline.steps, pipeline.steps.common, pipeline.steps.run_notes, "
        "pipeline.steps.reject, pipeline.steps.notify; "
        "print(sorted(m for m in ('numpy', 'pandas', 'sklearn', 'kfp', 'predictor') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.strip() == "[]"
