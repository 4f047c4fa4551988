"""Every command line's ``--help`` works on a fresh machine: no GATE_*/ROUTER_*/
PREDICTOR_* settings, an empty working folder, and it starts nothing and writes nothing.

A real process is the point: ``python -m gate --help`` used to read the settings and, with
a token in the environment, start the gate (and create ``.irisgate/`` in the cwd)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.integration

PACKAGES = ("benchmarks", "demo", "gate", "load_tests", "pipeline", "predictor")
SUBCOMMANDS = [
    ("pipeline", "run"),
    ("pipeline", "compile"),
    ("gate.cli", "rollouts"),
    ("gate.cli", "feedback"),
]
# Generous for a loaded 2-core CI machine (kserve and kfp take seconds to import); a
# command that started a server instead of printing its help would never finish.
HELP_TIMEOUT_S = 30


def runnable_modules() -> list[str]:
    """Every ``python -m`` entry point in the project's packages: ``__main__.py`` files and
    modules with a ``__main__`` guard, so a new command line is covered without a list."""
    found = []
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            if "oip" in path.parts or 'if __name__ == "__main__":' not in path.read_text():
                continue
            module = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
            found.append(module.removesuffix(".__main__"))
    return found


def unconfigured_env() -> dict[str, str]:
    """This environment without any of the project's own settings (a fresh machine's)."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.upper().startswith(("GATE_", "ROUTER_", "PREDICTOR_", "IRISGATE_"))
    }


def test_discovery_finds_the_known_commands() -> None:
    expected = {"gate", "gate.local.router", "predictor", "pipeline", "demo", "benchmarks"}
    assert expected <= set(runnable_modules())


@pytest.mark.parametrize(
    "command",
    [[module] for module in runnable_modules()] + [list(pair) for pair in SUBCOMMANDS],
    ids=" ".join,
)
def test_help_needs_no_settings_and_starts_nothing(tmp_path: Path, command: list[str]) -> None:
    cwd = tmp_path / "empty"
    cwd.mkdir()
    env = unconfigured_env()
    # benchmarks is not an installed package: run from the checkout like the Makefile does
    env["PYTHONPATH"] = str(REPO_ROOT)
    completed = subprocess.run(
        [sys.executable, "-m", *command, "--help"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=HELP_TIMEOUT_S,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "usage" in completed.stdout.lower()
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "the local backend needs GATE_ROUTER_TOKEN"),
        (
            {"GATE_ROUTER_TOKEN": "router-token-0123456789", "GATE_METRICS_PROVIDER": "prometheus"},
            "the prometheus provider needs GATE_PROMETHEUS_URL",
        ),
        ({"GATE_TRAFFIC_BACKEND": "nomad"}, "unknown traffic backend 'nomad'"),
    ],
    ids=["no-router-token", "prometheus-without-url", "unknown-backend"],
)
def test_a_gate_refused_at_start_writes_nothing(
    tmp_path: Path, settings: dict[str, str], message: str
) -> None:
    """The refusal is one line, and the store's folder (``.irisgate/``) is not made first."""
    cwd = tmp_path / "empty"
    cwd.mkdir()
    env = unconfigured_env()
    env |= {"GATE_API_TOKEN": "api-token-0123456789", **settings}
    completed = subprocess.run(
        [sys.executable, "-m", "gate"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=HELP_TIMEOUT_S,
    )
    assert completed.returncode != 0
    assert message in completed.stderr, completed.stderr[-2000:]
    assert "Traceback" not in completed.stderr
    assert list(cwd.iterdir()) == []
