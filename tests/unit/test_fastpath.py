"""The fast inference path: the same numbers as scikit-learn, or no fast path at all."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_iris
from sklearn.ensemble import (
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.tree import DecisionTreeClassifier

from predictor import fastpath
from predictor.artifact import fingerprint_dataset, write_artifact
from predictor.fastpath import compile_fast_path
from tests.helpers import IRIS_CLASSES, IRIS_FEATURES, train_iris

IRIS_X, IRIS_Y = load_iris(return_X_y=True)
CANCER_X, CANCER_Y = load_breast_cancer(return_X_y=True)


def _scaled(classifier: Any) -> Pipeline:
    return Pipeline([("scale", StandardScaler()), ("clf", classifier)])


SUPPORTED: dict[str, tuple[Callable[[], Any], np.ndarray, np.ndarray]] = {
    "logreg pipeline": (lambda: _scaled(LogisticRegression(max_iter=1000)), IRIS_X, IRIS_Y),
    "forest pipeline": (lambda: train_iris("forest")[0], IRIS_X, IRIS_Y),
    "binary logreg": (lambda: _scaled(LogisticRegression(max_iter=5000)), CANCER_X, CANCER_Y),
    "binary forest": (lambda: RandomForestClassifier(30, random_state=0), CANCER_X, CANCER_Y),
    "extra trees": (lambda: ExtraTreesClassifier(20, random_state=0), IRIS_X, IRIS_Y),
    "one deep tree": (lambda: DecisionTreeClassifier(random_state=0), CANCER_X, CANCER_Y),
    "unscaled logreg": (lambda: LogisticRegression(max_iter=5000), IRIS_X, IRIS_Y),
}


def _fitted(name: str) -> tuple[Any, np.ndarray]:
    make, features, labels = SUPPORTED[name]
    return make().fit(features, labels), features


@pytest.mark.parametrize("name", sorted(SUPPORTED))
def test_fast_path_gives_scikit_learns_exact_probabilities(name: str) -> None:
    estimator, features = _fitted(name)
    result = compile_fast_path(estimator)
    assert result.fast_path is not None, result.reason
    assert result.fast_path.checked_rows > 2000
    rng = np.random.default_rng(1)
    fresh = features[rng.integers(0, len(features), 300)] + rng.normal(
        0, 0.3, (300, features.shape[1])
    )
    for rows in (features, fresh, fresh[:1], fresh[7:9], fresh[:64]):
        np.testing.assert_array_equal(
            result.fast_path.predict_proba(rows), estimator.predict_proba(rows)
        )
        np.testing.assert_array_equal(
            result.fast_path.predict_proba(rows).argmax(axis=1),
            np.searchsorted(estimator.classes_, estimator.predict(rows)),
        )


@pytest.mark.parametrize(
    ("estimator", "named"),
    [
        (GradientBoostingClassifier(n_estimators=5), "GradientBoostingClassifier"),
        (Pipeline([("mm", MinMaxScaler()), ("clf", LogisticRegression())]), "MinMaxScaler"),
    ],
)
def test_an_unknown_step_means_no_fast_path_and_says_which(estimator: Any, named: str) -> None:
    result = compile_fast_path(estimator.fit(IRIS_X, IRIS_Y))
    assert result.fast_path is None
    assert named in result.reason


def test_a_tree_walk_that_skips_sklearns_float32_cast_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A plausible bug (comparing float64 features) only shows on rows that sit on split
    thresholds: the verification set has them, so the fast path is refused."""
    estimator = RandomForestClassifier(30, random_state=0).fit(CANCER_X, CANCER_Y)
    original = fastpath._Trees.__call__

    def float64_walk(self: fastpath._Trees, matrix: np.ndarray) -> np.ndarray:
        rows = len(matrix)
        went_left = (matrix[:, self.feature] <= self.threshold).ravel().view(np.int8)
        offset = (np.arange(rows) * self.n_nodes)[np.newaxis, :]
        nodes = np.repeat(self.roots, rows, axis=1)
        for _ in range(self.depth):
            nodes = self.children.take(2 * nodes + went_left.take(nodes + offset))
        total: np.ndarray = self.leaf_values.take(nodes, axis=0).sum(axis=0) / self.n_trees
        return total

    monkeypatch.setattr(fastpath._Trees, "__call__", float64_walk)
    refused = compile_fast_path(estimator)
    assert refused.fast_path is None
    assert "differ from scikit-learn's" in refused.reason
    monkeypatch.setattr(fastpath._Trees, "__call__", original)
    assert compile_fast_path(estimator).fast_path is not None


def test_coefficients_off_by_one_rounding_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    estimator = _scaled(LogisticRegression(max_iter=1000)).fit(IRIS_X, IRIS_Y)
    original_init = fastpath._Logistic.__init__

    def nudged(self: fastpath._Logistic, model: LogisticRegression) -> None:
        original_init(self, model)
        self.coef_t = np.nextafter(self.coef_t, np.inf)

    monkeypatch.setattr(fastpath._Logistic, "__init__", nudged)
    result = compile_fast_path(estimator)
    assert result.fast_path is None
    assert "LogisticRegression" in result.reason


def test_the_model_serves_scikit_learn_when_there_is_no_fast_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    from prometheus_client import CollectorRegistry

    from predictor.metrics import PredictorMetrics
    from predictor.model import IrisModel

    estimator = GradientBoostingClassifier(n_estimators=10, random_state=0).fit(IRIS_X, IRIS_Y)
    write_artifact(
        estimator,
        tmp_path / "gb",
        name="iris",
        version="1",
        feature_names=IRIS_FEATURES,
        class_names=IRIS_CLASSES,
        training_data_fingerprint=fingerprint_dataset(IRIS_X, IRIS_Y),
        model_format="joblib",  # outside skops' reviewed types: a pickle, loaded by opt-in
    )
    registry = CollectorRegistry()
    for fast_path in (True, False):
        model = IrisModel(
            "iris",
            tmp_path / "gb",
            max_rows=200,
            batch_max_rows=64,
            fast_path=fast_path,
            allow_pickle=True,
            metrics=PredictorMetrics("iris", "1", "stable", registry=registry)
            if fast_path
            else PredictorMetrics("iris", "1", "canary", registry=CollectorRegistry()),
        )
        with caplog.at_level(logging.INFO, logger="predictor.model"):
            model.load()
        assert model.fast_path is None
        assert model.batcher is not None and model.batcher.in_thread  # slow model: off the loop
        answer = asyncio.run(model.predict({"instances": IRIS_X[:50].tolist()}))
        assert answer["predictions"] == estimator.predict(IRIS_X[:50]).tolist()
    assert "fast path off, serving with scikit-learn: GradientBoostingClassifier" in caplog.text


def test_the_model_uses_the_fast_path_on_the_event_loop_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    from prometheus_client import CollectorRegistry

    from predictor.metrics import PredictorMetrics
    from predictor.model import IrisModel
    from tests.helpers import make_artifact

    model = IrisModel(
        "iris",
        make_artifact(tmp_path / "forest", classifier="forest"),
        max_rows=200,
        batch_max_rows=64,
        metrics=PredictorMetrics("iris", "1", "stable", registry=CollectorRegistry()),
    )
    with caplog.at_level(logging.INFO, logger="predictor.model"):
        model.load()
    assert model.fast_path is not None
    assert model.batcher is not None and not model.batcher.in_thread
    assert "fast path on: StandardScaler -> RandomForestClassifier (100 trees" in caplog.text
    forest, _, _ = train_iris("forest")
    answer = asyncio.run(
        model.predict({"instances": IRIS_X.tolist(), "outputs": ["predict", "predict_proba"]})
    )
    assert answer["predictions"] == forest.predict(IRIS_X).tolist()
    assert answer["probabilities"] == forest.predict_proba(IRIS_X).round(6).tolist()
