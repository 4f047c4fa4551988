"""Save the benchmark's fitted estimator as an MLflow model, for ``mlflow models serve``.

Run with the MLflow venv's Python (``.bench/mlflow-venv/bin/python``), never ours:
``python benchmarks/mlflow_model.py ARTIFACT/model.joblib OUT_DIR``. The estimator is the
very one the other peers load (``model.joblib``, written by ``make_artifacts``); it is
re-saved the way MLflow's docs show, with ``mlflow.sklearn.save_model`` and an input
example from which MLflow infers the signature it then enforces on every request.

Serialization: skops, MLflow's default and the safe one (like irisgate's own artifacts),
not pickle. skops refuses to load types not on a trusted list; the scaler, the pipeline,
the forest and logistic regression are trusted by skops itself, the forest's trees
(``sklearn.tree._tree.Tree``) are not, so they are listed here: the file is the one this
script just wrote from our own estimator. The requirement files MLflow writes beside the
model are given, not inferred (inferring loads the model in a subprocess; with
``--env-manager local`` they are never read).
"""

from __future__ import annotations

import argparse
from pathlib import Path

SKOPS_TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]
BENCH_ROW = [[6.8, 2.8, 4.8, 1.4]]  # generators.ROW; this script runs without our packages


def main(joblib_file: Path, out: Path) -> None:
    import joblib
    import mlflow.sklearn
    import numpy as np
    import sklearn

    estimator = joblib.load(joblib_file)
    mlflow.sklearn.save_model(
        estimator,
        str(out),
        serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
        skops_trusted_types=SKOPS_TRUSTED_TYPES,
        input_example=np.array(BENCH_ROW),
        pip_requirements=[f"scikit-learn=={sklearn.__version__}"],
    )


if __name__ == "__main__":
    # argparse, not sys.argv: --help (or a missing argument) answers before MLflow is
    # imported, in any venv
    parser = argparse.ArgumentParser(
        prog="python benchmarks/mlflow_model.py",
        description="Save the benchmark's estimator as an MLflow model (run with the "
        "MLflow venv's Python).",
    )
    parser.add_argument("joblib_file", type=Path, help="the artifact's model.joblib")
    parser.add_argument("out", type=Path, help="folder to write the MLflow model to")
    args = parser.parse_args()
    main(args.joblib_file, args.out)
