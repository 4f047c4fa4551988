"""Bring your own model, end to end: a notebook's pickle (string labels, as notebooks fit
them) -> ``python -m predictor.package --holdout`` -> the gate's accuracy gate and canary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import joblib
import pandas as pd
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tests.gate_stack import TEST_MARGINS, LocalStack, build_registry
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.integration

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def notebook(folder: Path) -> tuple[Path, Path, float]:
    """What a data scientist has at the end of a notebook: a pickle and a held-out split."""
    iris = load_iris()
    names = [str(iris.target_names[i]) for i in iris.target]
    x_train, x_test, y_train, y_test = train_test_split(
        iris.data, names, test_size=0.3, random_state=3, stratify=names
    )
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    model.fit(x_train, y_train)
    joblib.dump(model, folder / "nb.joblib")
    held_out = pd.DataFrame(x_test, columns=FEATURES).assign(species=y_test)
    held_out.to_csv(folder / "held_out.csv", index=False)
    return folder / "nb.joblib", folder / "held_out.csv", float(model.score(x_test, y_test))


def test_a_notebook_model_goes_through_package_and_the_gate(tmp_path: Path) -> None:
    registry = build_registry(tmp_path / "a", classifiers=("logreg",))  # stable v1
    pickle_file, held_out, accuracy = notebook(tmp_path)
    packaged = subprocess.run(
        [
            sys.executable,
            "-m",
            "predictor.package",
            "--model",
            str(pickle_file),
            "--name",
            "iris",
            "--version",
            "2",
            "--out",
            str(registry / "iris" / "2"),
            "--holdout",
            str(held_out),
            "--metric",
            f"accuracy={accuracy}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert packaged.returncode == 0, packaged.stderr
    stack = LocalStack(tmp_path, registry)
    try:
        stack.start_router()
        stack.start_gate()
        with stack.traffic():
            rollout = stack.create("2", steps=[50, 100], step_interval_s=1.5, **TEST_MARGINS)
            detail = stack.wait_phase(rollout, {"succeeded", "rolled_back", "failed"})
        assert detail["phase"] == "succeeded", detail["message"]
        gate = next(d for d in detail["decisions"] if d["action"] == "step")
        assert gate["evidence"]["live_accuracy"] == pytest.approx(accuracy)
        assert gate["evidence"]["replayed_rows"] == 45
    finally:
        stack.stop()
