"""What a pipeline step's image holds, read from its Dockerfile, so the tests that rebuild
an image's contents without Docker also check the Dockerfile they rebuild it from.

A step's Dockerfile (``pipeline/steps/<step>/Dockerfile``) installs the step's
``requirements.txt`` into a venv in its build stage, and in its final stage copies that
venv and, with plain ``COPY`` lines, the repository files the step imports under the
folder its ``PYTHONPATH`` names. :func:`read_step_image` reads exactly that back.
"""

from __future__ import annotations

import ast
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tests.helpers import REPO_ROOT

STEPS_DIR = REPO_ROOT / "pipeline" / "steps"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def instructions(dockerfile: Path) -> list[list[Instruction]]:
    """The Dockerfile's instructions, one list per stage; continuation lines joined and
    comments dropped."""
    stages: list[list[Instruction]] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        pending = ""
        if keyword.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(Instruction(keyword.upper(), arguments.strip()))
    return stages


def env_values(stage: list[Instruction]) -> dict[str, str]:
    """``ENV KEY=VALUE ...`` of a stage (the ``KEY=VALUE`` form only, as hadolint wants)."""
    values: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            for pair in shlex.split(instruction.arguments):
                key, _, value = pair.partition("=")
                values[key] = value
    return values


@dataclass(frozen=True)
class StepImage:
    """A step image's contents as its Dockerfile states them."""

    step: str
    dockerfile: Path
    requirements: Path
    build_copies: list[str]
    """Sources of the build stage's ``COPY`` lines (what the install sees)."""
    install: str
    """The build stage's ``RUN`` line that installs the requirements."""
    import_root: PurePosixPath
    """``PYTHONPATH`` in the final stage: where the repository's files land."""
    files: dict[str, PurePosixPath]
    """Repository path of each file the final stage copies -> its path under
    :attr:`import_root`."""


def read_step_image(step: str) -> StepImage:
    dockerfile = STEPS_DIR / step / "Dockerfile"
    stages = instructions(dockerfile)
    assert len(stages) >= 2, f"{dockerfile}: multi-stage expected"
    build, final = stages[0], stages[-1]
    build_copies = [
        source
        for instruction in build
        if instruction.keyword == "COPY"
        for source in shlex.split(instruction.arguments)[:-1]
    ]
    installs = [i.arguments for i in build if i.keyword == "RUN" and "install" in i.arguments]
    assert len(installs) == 1, f"{dockerfile}: one install in the build stage"
    root = PurePosixPath(env_values(final)["PYTHONPATH"])
    files: dict[str, PurePosixPath] = {}
    for instruction in final:
        if instruction.keyword != "COPY" or instruction.arguments.startswith("--from"):
            continue
        *sources, destination = shlex.split(instruction.arguments)
        assert destination.endswith("/"), f"{dockerfile}: COPY into a folder ({destination})"
        target = PurePosixPath(destination)
        assert target.is_relative_to(root), f"{dockerfile}: {destination} is outside {root}"
        for source in sources:
            assert (REPO_ROOT / source).is_file(), f"{dockerfile}: {source} is not a file"
            files[source] = (target / PurePosixPath(source).name).relative_to(root)
    return StepImage(
        step,
        dockerfile,
        STEPS_DIR / step / "requirements.txt",
        build_copies,
        installs[0],
        root,
        files,
    )


def stage_import_root(image: StepImage, target: Path) -> Path:
    """The image's import root with exactly the files its Dockerfile copies."""
    for source, relative in image.files.items():
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO_ROOT / source, destination)
    return target


def repository_imports(tree: ast.AST) -> set[str]:
    """Modules of this repository (``pipeline``, ``predictor``) that the code in ``tree``
    imports, at any depth (the components import inside their function bodies)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            # ``from predictor import signing`` imports the module predictor.signing
            found |= {
                f"{node.module}.{alias.name}"
                for alias in node.names
                if module_path(f"{node.module}.{alias.name}") is not None
            }
    return {name for name in found if name.split(".")[0] in ("pipeline", "predictor")}


def module_path(module: str) -> Path | None:
    """The file of a repository module (a package's ``__init__.py``), if there is one."""
    base = REPO_ROOT.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def module_files(module: str) -> set[str]:
    """The repository files ``import module`` reads: each package's ``__init__.py`` on
    the way down and the module itself."""
    parts = module.split(".")
    files: set[str] = set()
    for depth in range(1, len(parts) + 1):
        path = module_path(".".join(parts[:depth]))
        assert path is not None, f"no module {'.'.join(parts[:depth])} in the repository"
        files.add(path.relative_to(REPO_ROOT).as_posix())
    return files


def imported_files(tree: ast.AST) -> set[str]:
    """Every repository file that running ``tree`` imports, following the imports of the
    imported files in turn."""
    files: set[str] = set()
    pending: set[str] = set().union(*(module_files(m) for m in repository_imports(tree)))
    while pending:
        path = pending.pop()
        files.add(path)
        module_tree = ast.parse((REPO_ROOT / path).read_text())
        for module in repository_imports(module_tree):
            pending |= module_files(module) - files
    return files
