"""A fast inference path: the verified scikit-learn pipeline re-expressed as array maths.

scikit-learn pays a fixed cost per call (input validation, joblib dispatch, one Python
call per tree): about 0.3-0.7 ms for the scaler + logistic regression pipeline and 5-11 ms
for a 100-tree forest, whatever the number of rows. The arithmetic itself is microseconds.
This module rebuilds the same arithmetic from the fitted attributes, step by step in the
order scikit-learn does it, so the results are the same numbers, not just close ones:

- ``StandardScaler``: ``x -= mean``; ``x /= scale`` (in the input's dtype, as sklearn does);
- ``LogisticRegression``: ``x @ coef.T + intercept``, then softmax (multiclass) or the
  logistic function (binary), in place, as sklearn does;
- decision trees, random forests and extra trees: every tree's nodes in flat arrays, all
  trees walked at once (features compared as float32 against float64 thresholds, like
  sklearn's tree code), leaf class fractions summed tree by tree, then divided.

Nothing is trusted on faith: :func:`compile_fast_path` checks the fast path against the
estimator's own ``predict_proba`` at load time, bit for bit, on a verification set that
covers every split threshold from both sides, and on single rows. Any difference, or any
step it does not know, and it returns no fast path with a reason; the caller serves with
scikit-learn and logs the reason. Inputs are finite float64 matrices (validated upstream).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import expit
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier, ExtraTreeClassifier

Transform = Callable[[np.ndarray], np.ndarray]

VERIFICATION_ROWS = 2048
SINGLE_ROW_CHECKS = 32


class Unsupported(Exception):
    """A step the fast path cannot reproduce exactly; the message says which."""


@dataclass(frozen=True)
class FastPath:
    """``predict_proba`` as array maths, plus what it is, for the log."""

    predict_proba: Transform
    description: str
    checked_rows: int


@dataclass(frozen=True)
class FastPathResult:
    fast_path: FastPath | None
    reason: str  # why there is no fast path; empty when there is one


# --- steps -------------------------------------------------------------------------------


class _Scaler:
    def __init__(self, scaler: StandardScaler) -> None:
        self.mean = scaler.mean_ if scaler.with_mean else None
        self.scale = scaler.scale_ if scaler.with_std else None

    def __call__(self, matrix: np.ndarray) -> np.ndarray:
        out = np.array(matrix, copy=True)
        if self.mean is not None:
            out -= self.mean.astype(out.dtype)
        if self.scale is not None:
            out /= self.scale.astype(out.dtype)
        return out


class _Logistic:
    def __init__(self, model: LogisticRegression) -> None:
        self.coef_t = model.coef_.T
        self.intercept = model.intercept_
        self.binary = len(model.classes_) <= 2

    def __call__(self, matrix: np.ndarray) -> np.ndarray:
        scores: np.ndarray = matrix @ self.coef_t + self.intercept
        if self.binary:
            positive = expit(scores.reshape(-1), out=scores.reshape(-1))
            return np.stack([1 - positive, positive], axis=1)
        scores -= scores.max(axis=1).reshape(-1, 1)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=1).reshape(-1, 1)
        return scores


class _Trees:
    """All trees' nodes in flat arrays; a leaf points to itself, so a fixed number of
    steps (the deepest tree's depth) walks every tree to its leaf.

    Every split of every tree is decided up front in one vectorised comparison (rows x
    nodes, cheap next to per-node indexing), then each step is two lookups: the node's
    decision, and the child it picks."""

    def __init__(self, trees: Sequence[Any], n_classes: int, average: bool) -> None:
        children, features, thresholds, leaf_values, roots = [], [], [], [], []
        offset = 0
        depth = 0
        for tree in trees:
            t = tree.tree_
            if t.n_outputs != 1 or t.value.shape[2] != n_classes:
                raise Unsupported("multi-output trees")
            index = np.arange(t.node_count)
            leaf = t.children_left == -1
            left = np.where(leaf, index, t.children_left) + offset
            right = np.where(leaf, index, t.children_right) + offset
            children.append(np.stack([right, left], axis=1).ravel())  # [2n + went_left]
            features.append(np.where(leaf, 0, t.feature))
            thresholds.append(np.where(leaf, np.inf, t.threshold))
            values = t.value[:, 0, :].astype(np.float64, copy=True)
            normalizer = values.sum(axis=1)[:, np.newaxis]
            normalizer[normalizer == 0.0] = 1.0
            leaf_values.append(values / normalizer)
            roots.append(offset)
            offset += t.node_count
            depth = max(depth, int(t.max_depth))
        self.children = np.concatenate(children).astype(np.intp)
        self.feature = np.concatenate(features).astype(np.intp)
        self.threshold = np.concatenate(thresholds)
        self.leaf_values = np.concatenate(leaf_values)
        self.roots = np.asarray(roots, dtype=np.intp)[:, np.newaxis]
        self.n_nodes = offset
        self.depth = depth
        self.n_trees = len(roots)
        self.average = average

    def thresholds_by_feature(self, n_features: int) -> list[np.ndarray]:
        split = np.isfinite(self.threshold)
        return [np.unique(self.threshold[split & (self.feature == f)]) for f in range(n_features)]

    def __call__(self, matrix: np.ndarray) -> np.ndarray:
        # sklearn's trees compare float32 features with float64 thresholds; so do we.
        values = matrix.astype(np.float32)
        rows = len(values)
        went_left = (values[:, self.feature] <= self.threshold).ravel().view(np.int8)
        row_offset = (np.arange(rows, dtype=np.intp) * self.n_nodes)[np.newaxis, :]
        nodes = np.repeat(self.roots, rows, axis=1)  # (trees, rows)
        for _ in range(self.depth):
            nodes = self.children.take(2 * nodes + went_left.take(nodes + row_offset))
        per_tree: np.ndarray = self.leaf_values.take(nodes, axis=0)  # (trees, rows, classes)
        if not self.average:
            first: np.ndarray = per_tree[0]
            return first
        # numpy reduces a leading axis tree after tree, as sklearn's loop adds them: the
        # same roundings (the load-time check holds it to that).
        total: np.ndarray = per_tree.sum(axis=0)
        total /= self.n_trees
        return total


# --- compilation -------------------------------------------------------------------------


def _final_step(estimator: Any) -> tuple[Transform, str, _Trees | None]:
    kind = type(estimator)
    if kind is LogisticRegression:
        return _Logistic(estimator), "LogisticRegression", None
    if kind in (RandomForestClassifier, ExtraTreesClassifier):
        trees = _Trees(estimator.estimators_, len(estimator.classes_), average=True)
        return trees, f"{kind.__name__} ({trees.n_trees} trees, depth {trees.depth})", trees
    if kind in (DecisionTreeClassifier, ExtraTreeClassifier):
        trees = _Trees([estimator], len(estimator.classes_), average=False)
        return trees, f"{kind.__name__} (depth {trees.depth})", trees
    raise Unsupported(f"{kind.__name__} has no fast path")


def _steps(estimator: Any) -> list[Any]:
    if type(estimator) is Pipeline:
        return [step for _, step in estimator.steps if step not in (None, "passthrough")]
    return [estimator]


def _build(estimator: Any) -> tuple[list[Transform], str, _Trees | None]:
    steps = _steps(estimator)
    transforms: list[Transform] = []
    names: list[str] = []
    for step in steps[:-1]:
        if type(step) is not StandardScaler:
            raise Unsupported(f"pipeline step {type(step).__name__} has no fast path")
        transforms.append(_Scaler(step))
        names.append("StandardScaler")
    final, name, trees = _final_step(steps[-1])
    transforms.append(final)
    names.append(name)
    return transforms, " -> ".join(names), trees


class _Chain:
    """Steps applied in order."""

    def __init__(self, transforms: list[Transform]) -> None:
        self.transforms = transforms

    def __call__(self, matrix: np.ndarray) -> np.ndarray:
        for transform in self.transforms:
            matrix = transform(matrix)
        return matrix


def _around_thresholds(thresholds: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Rows whose features sit on, just below and just above split thresholds (in the
    final estimator's input space), where float32-versus-float64 slips would show."""
    columns = []
    for values in thresholds:
        if len(values) == 0:
            values = np.zeros(1)
        as32 = values.astype(np.float32).astype(np.float64)
        near = np.concatenate(
            [
                values,
                as32,
                np.nextafter(values, -np.inf),
                np.nextafter(values, np.inf),
                np.nextafter(as32.astype(np.float32), np.float32(np.inf)).astype(np.float64),
            ]
        )
        columns.append(near)
    length = max(len(c) for c in columns)
    return np.column_stack([rng.choice(c, size=length) for c in columns])


def _verification_rows(estimator: Any, n_features: int, rng: np.random.Generator) -> np.ndarray:
    """Raw-space rows: wide Gaussians around the scaler's mean when there is one."""
    first = _steps(estimator)[0]
    centre, spread = np.zeros(n_features), np.ones(n_features)
    if type(first) is StandardScaler:
        centre = first.mean_ if first.with_mean else centre
        spread = first.scale_ if first.with_std else spread
    standard = rng.normal(scale=2.0, size=(VERIFICATION_ROWS, n_features))
    return np.asarray(centre + standard * spread, dtype=np.float64)


def _equal(fast: Transform, reference: Transform, rows: np.ndarray) -> str:
    expected = np.asarray(reference(rows), dtype=np.float64)
    got = np.asarray(fast(rows), dtype=np.float64)
    if got.shape != expected.shape:
        return f"shape {got.shape} differs from scikit-learn's {expected.shape}"
    if not np.array_equal(got, expected):
        worst = float(np.max(np.abs(got - expected)))
        return f"probabilities differ from scikit-learn's by up to {worst:.3g}"
    return ""


def compile_fast_path(estimator: Any, seed: int = 0) -> FastPathResult:
    """The fast path for ``estimator``, checked against it, or the reason there is none."""
    n_features = getattr(estimator, "n_features_in_", None)
    if not isinstance(n_features, int) or not hasattr(estimator, "predict_proba"):
        return FastPathResult(None, "the estimator has no n_features_in_ or predict_proba")
    try:
        transforms, description, trees = _build(estimator)
    except (Unsupported, AttributeError) as exc:
        return FastPathResult(None, str(exc))
    fast = transforms[0] if len(transforms) == 1 else _Chain(transforms)
    rng = np.random.default_rng(seed)
    rows = _verification_rows(estimator, n_features, rng)
    checks: list[tuple[Transform, Transform, np.ndarray]] = [(fast, estimator.predict_proba, rows)]
    checks += [(fast, estimator.predict_proba, rows[i : i + 1]) for i in range(SINGLE_ROW_CHECKS)]
    if trees is not None:
        final = _steps(estimator)[-1]
        edges = _around_thresholds(trees.thresholds_by_feature(n_features), rng)
        checks.append((trees, final.predict_proba, edges))
    checked = 0
    for candidate, reference, matrix in checks:
        try:
            problem = _equal(candidate, reference, matrix)
        except Exception as exc:  # a fitted attribute we misread: never serve it
            problem = f"verification failed: {type(exc).__name__}: {exc}"
        if problem:
            return FastPathResult(None, f"{description}: {problem}")
        checked += len(matrix)
    return FastPathResult(FastPath(fast, description, checked), "")
