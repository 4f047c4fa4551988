"""``python -m predictor.package``: turn a notebook's joblib file into a verified artifact.

The input file is the user's own pickle and is loaded as such: only package files you
produced yourself. The output is what the predictor will trust, because its metadata now
pins the hash.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import joblib

from predictor.artifact import ArtifactError, sha256_file, write_artifact

IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
IRIS_CLASSES = ["setosa", "versicolor", "virginica"]


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m predictor.package", description=__doc__)
    parser.add_argument(
        "--model",
        required=True,
        type=Path,
        help="fitted scikit-learn estimator or Pipeline saved with joblib.dump",
    )
    parser.add_argument("--name", required=True, help="model name (lowercase DNS label)")
    parser.add_argument("--version", required=True, help="model version (integer)")
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="artifact directory to create (must not exist or be empty)",
    )
    parser.add_argument(
        "--feature-names",
        type=_csv,
        default=IRIS_FEATURES,
        help="comma-separated feature names (default: the Iris features)",
    )
    parser.add_argument(
        "--class-names",
        type=_csv,
        default=IRIS_CLASSES,
        help="comma-separated class names for ids 0..N-1 (default: Iris)",
    )
    parser.add_argument(
        "--data-fingerprint",
        default=None,
        help="training-data fingerprint to record (default: 'unknown:' + "
        "the source file's sha256, which at least names the source)",
    )
    parser.add_argument(
        "--metric",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="offline metric to record, e.g. accuracy=0.97 (repeatable)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        metrics = {k: float(v) for k, v in (m.split("=", 1) for m in args.metric)}
    except ValueError:
        print("package: --metric takes NAME=NUMBER", file=sys.stderr)
        return 2
    if not args.model.is_file():
        print(f"package: {args.model}: no such file", file=sys.stderr)
        return 2
    estimator = joblib.load(args.model)
    fingerprint = args.data_fingerprint or f"unknown:sha256:{sha256_file(args.model)}"
    try:
        metadata = write_artifact(
            estimator,
            args.out,
            name=args.name,
            version=args.version,
            feature_names=args.feature_names,
            class_names=args.class_names,
            training_data_fingerprint=fingerprint,
            metrics=metrics,
        )
    except ArtifactError as exc:
        print(f"package: {exc}", file=sys.stderr)
        return 1
    print(
        f"wrote {args.out} ({metadata.name} v{metadata.version}, sha256 "
        f"{metadata.sha256[:12]}..., scikit-learn {metadata.sklearn_version})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
