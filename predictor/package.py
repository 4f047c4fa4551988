"""``python -m predictor.package``: turn a notebook's joblib file into a signed, safe artifact.

The input file is the user's own pickle and is loaded once, as such, in the user's own
trust: only package files you produced yourself. The output stores the model with skops
(only reviewed types, no code runs when the predictor loads it) and a signed manifest that
pins its digest. A model fitted on string labels (``y = ["setosa", ...]``) is stored with
its classes re-encoded to the ids 0..N-1 and the names kept as ``class_names``; the
re-encoded copy must predict exactly what the original does, or nothing is written.
``--holdout CSV`` (the feature columns plus ``species``, by name or id) is checked and
written as the artifact's ``holdout.csv``, the held-out set the gate replays.
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from predictor.artifact import ArtifactError, sha256_file, write_artifact
from predictor.signing import SigningError, read_signing_key

IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
IRIS_CLASSES = ["setosa", "versicolor", "virginica"]
LABEL = "species"  # the label column the gate's replay reads
HOLDOUT_FILE = "holdout.csv"
_CHECK_ROWS = 512


class PackageError(Exception):
    """A model or holdout that cannot be packaged; ``str()`` is one line."""


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m predictor.package",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        required=True,
        type=Path,
        help="fitted scikit-learn estimator or Pipeline saved with joblib.dump (YOUR file: "
        "it is unpickled, which runs code)",
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
        default=None,
        help="comma-separated class names for ids 0..N-1 (default: the model's own "
        "classes_ when they are labels such as 'setosa', else the Iris names)",
    )
    parser.add_argument(
        "--holdout",
        type=Path,
        default=None,
        help=f"held-out CSV (feature columns + '{LABEL}') to check and ship as {HOLDOUT_FILE}",
    )
    parser.add_argument(
        "--signing-key",
        type=Path,
        default=None,
        help="Ed25519 private key (PEM) to sign with (default: $IRISGATE_SIGNING_KEY, else "
        "the development key in .irisgate/keys/)",
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


def class_names_of(estimator: Any, given: list[str] | None) -> tuple[list[str], bool]:
    """The class names, and whether ``classes_`` must be re-encoded to 0..N-1."""
    classes = getattr(estimator, "classes_", None)
    if classes is None:
        raise PackageError("the model has no classes_: is it a fitted classifier?")
    values = list(np.asarray(classes).tolist())
    if values == list(range(len(values))):
        names = given if given is not None else IRIS_CLASSES
        if len(names) != len(values):
            raise PackageError(
                f"the model has {len(values)} classes (ids 0..{len(values) - 1}) but "
                f"{len(names)} class names; pass --class-names"
            )
        return list(names), False
    names = [str(value) for value in values]
    if given is not None and given != names:
        raise PackageError(
            f"--class-names {','.join(given)} differ from the model's classes_ {','.join(names)}"
        )
    return names, True


def reencode_classes(estimator: Any, rows: np.ndarray) -> Any:
    """A copy whose ``classes_`` are 0..N-1, checked to predict exactly like the original.

    Only the final classifier's ``classes_`` changes (a Pipeline reads its last step's);
    the classifiers the project serves map scores to ``classes_`` only at the very end, so
    probabilities and their column order stay the same."""
    original_classes = np.asarray(estimator.classes_)
    encoded = copy.deepcopy(estimator)
    final = encoded.steps[-1][1] if hasattr(encoded, "steps") else encoded
    final.classes_ = np.arange(len(original_classes), dtype=np.int64)
    before = np.asarray(estimator.predict(rows))
    after = np.asarray(encoded.predict(rows))
    same_labels = np.array_equal(original_classes[after.astype(np.int64)], before)
    same_proba = np.array_equal(estimator.predict_proba(rows), encoded.predict_proba(rows))
    if not (same_labels and same_proba):
        raise PackageError(
            "re-encoding the class labels to ids changes this model's predictions; fit it on "
            "integer ids 0..N-1 and pass --class-names"
        )
    return encoded


def read_holdout(
    path: Path, feature_names: Sequence[str], class_names: Sequence[str]
) -> list[list[Any]]:
    """Rows of features + class id; line numbers count the header as 1."""
    if not path.is_file():
        raise PackageError(f"{path}: no such file")
    ids = {name: i for i, name in enumerate(class_names)}
    ids |= {str(i): i for i in range(len(class_names))}
    rows: list[list[Any]] = []
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle, skipinitialspace=True)
            columns = [c.strip() for c in reader.fieldnames or []]
            for column in [*feature_names, LABEL]:
                if column not in columns:
                    raise PackageError(
                        f"{path}: missing column '{column}' (have: {', '.join(columns)})"
                    )
            for line, raw in enumerate(reader, start=2):
                record = {str(k).strip(): (v or "").strip() for k, v in raw.items()}
                row: list[Any] = []
                for column in feature_names:
                    try:
                        number = float(record[column])
                    except ValueError:
                        number = math.nan
                    if not math.isfinite(number):
                        raise PackageError(
                            f"{path}: line {line}: column '{column}' value "
                            f"{record[column]!r} is not a finite number"
                        )
                    row.append(number)
                label = record[LABEL]
                if label not in ids:
                    raise PackageError(
                        f"{path}: line {line}: unknown class {label!r} in column '{LABEL}' "
                        f"(known: {', '.join(class_names)})"
                    )
                rows.append([*row, ids[label]])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PackageError(f"{path}: not a readable CSV file ({exc})") from exc
    if not rows:
        raise PackageError(f"{path}: no data rows")
    return rows


def _check_rows(n_features: int, holdout: list[list[Any]] | None) -> np.ndarray:
    rng = np.random.default_rng(0)
    synthetic = rng.normal(0.0, 4.0, size=(_CHECK_ROWS, n_features))
    if not holdout:
        return synthetic
    return np.vstack([np.asarray([r[:n_features] for r in holdout], dtype=np.float64), synthetic])


def write_holdout(path: Path, feature_names: Sequence[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*feature_names, LABEL])
        writer.writerows([*(repr(float(v)) for v in row[:-1]), int(row[-1])] for row in rows)


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
    try:
        signing_key = read_signing_key(args.signing_key) if args.signing_key else None
        estimator = joblib.load(args.model)  # the user's own pickle, in the user's trust
        class_names, reencode = class_names_of(estimator, args.class_names)
        holdout = (
            read_holdout(args.holdout, args.feature_names, class_names) if args.holdout else None
        )
        if reencode:
            estimator = reencode_classes(estimator, _check_rows(len(args.feature_names), holdout))
        fingerprint = args.data_fingerprint or f"unknown:sha256:{sha256_file(args.model)}"
        metadata = write_artifact(
            estimator,
            args.out,
            name=args.name,
            version=args.version,
            feature_names=args.feature_names,
            class_names=class_names,
            training_data_fingerprint=fingerprint,
            metrics=metrics,
            signing_key=signing_key,
        )
        if holdout is not None:
            write_holdout(args.out / HOLDOUT_FILE, args.feature_names, holdout)
    except (ArtifactError, PackageError, SigningError) as exc:
        print(f"package: {exc}", file=sys.stderr)
        return 1
    print(
        f"wrote {args.out} ({metadata.name} v{metadata.version}, {metadata.format} "
        f"{metadata.digest}, classes {','.join(class_names)}, signed; "
        f"scikit-learn {metadata.sklearn_version})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
