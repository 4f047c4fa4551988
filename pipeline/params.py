"""The pipeline's parameter defaults, in one place.

The compiled pipeline (what a cluster runs when a parameter is left out) and
``python -m pipeline run`` (what a local run uses) both read :data:`DEFAULTS`, so they
cannot drift apart again (the compiled ``seed`` once defaulted to 42 while the CLI used 7).
``registry`` has no default on purpose: where models land must be said.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PipelineDefaults:
    """Default value of every pipeline parameter that has one."""

    model_name: str = "iris"
    """Model name in the registry and at the gate."""
    threshold: float = 0.9
    """Minimum held-out accuracy to deploy."""
    data_csv: str = ""
    """Training CSV; empty means the Iris data shipped with scikit-learn."""
    test_fraction: float = 0.3
    """Held-out share for evaluation and the gate's replay."""
    seed: int = 7
    """Split and training seed."""
    classifier: str = "logreg"
    """``logreg`` or ``forest``."""
    c: float = 1.0
    """Logistic regression's inverse regularisation."""
    max_iter: int = 500
    """Logistic regression's iterations."""
    n_estimators: int = 100
    """Random forest's trees."""
    max_depth: int = 0
    """Random forest's depth; 0 is unlimited."""
    label_noise: float = 0.0
    """Fraction of training labels replaced at random (an honestly weak model)."""
    train_fraction: float = 1.0
    """Fraction of the training split kept."""
    gate_url: str = ""
    """Gate to hand a deployed candidate to; empty hands it to nobody."""


DEFAULTS = PipelineDefaults()
