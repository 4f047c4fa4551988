"""What the checkout must not carry: files a README example writes at the root."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.helpers import REPO_ROOT

# README's curl example saves a created rollout here; a committed copy held a machine
# path (/work/main/.irisgate/registry/...), and nothing in the code reads it.
WRITTEN_BY_README = ["rollout.json"]


@pytest.mark.parametrize("name", WRITTEN_BY_README)
def test_files_the_readme_writes_are_ignored_and_not_tracked(name: str) -> None:
    assert name in (REPO_ROOT / ".gitignore").read_text().split()
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(
        ["git", "ls-files", "--", name],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert tracked == ""
