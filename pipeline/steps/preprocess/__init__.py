"""The preprocess step: load the Iris data (shipped with scikit-learn) or a user CSV,
check it against the schema, and split it stratified into training and test splits."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split

from pipeline.steps.common import CLASSES, FEATURES, LABEL, DataError


def load_dataset(csv_path: str | None) -> pd.DataFrame:
    """The Iris data shipped with scikit-learn, or a user CSV checked against the schema."""
    if not csv_path:
        iris = load_iris()
        frame = pd.DataFrame(iris.data, columns=FEATURES)
        frame[LABEL] = iris.target.astype(np.int64)
        return frame
    return validate_frame(_read_csv(Path(csv_path)), csv_path)


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc})") from exc


def validate_frame(raw: pd.DataFrame, source: str) -> pd.DataFrame:
    """Columns, numbers, missing values and classes; line numbers count the header as 1."""
    columns = [c.strip() for c in raw.columns]
    raw = raw.set_axis(columns, axis=1)
    for column in [*FEATURES, LABEL]:
        if column not in columns:
            raise DataError(f"{source}: missing column '{column}' (have: {', '.join(columns)})")
    if raw.empty:
        raise DataError(f"{source}: no data rows")
    frame = pd.DataFrame(index=raw.index)
    for column in FEATURES:
        values = raw[column].str.strip()
        for index, text in values.items():
            line = int(str(index)) + 2
            if text == "":
                raise DataError(f"{source}: line {line}: missing value in column '{column}'")
            try:
                number = float(text)
            except ValueError:
                raise DataError(
                    f"{source}: line {line}: column '{column}' value {text!r} is not a number"
                ) from None
            if not math.isfinite(number):
                raise DataError(
                    f"{source}: line {line}: column '{column}' value {text!r} "
                    "is not a finite number"
                )
        frame[column] = values.astype(np.float64)
    labels = raw[LABEL].str.strip()
    ids = {name: i for i, name in enumerate(CLASSES)} | {str(i): i for i in range(len(CLASSES))}
    for index, text in labels.items():
        if text not in ids:
            line = int(str(index)) + 2
            what = "missing value" if text == "" else f"unknown class {text!r}"
            raise DataError(
                f"{source}: line {line}: {what} in column '{LABEL}' (known: {', '.join(CLASSES)})"
            )
    frame[LABEL] = labels.map(ids).astype(np.int64)
    counts = frame[LABEL].value_counts()
    for class_id, name in enumerate(CLASSES):
        if counts.get(class_id, 0) < 2:
            raise DataError(
                f"{source}: class '{name}' needs at least 2 rows for a stratified "
                f"split, has {counts.get(class_id, 0)}"
            )
    return frame


@dataclass(frozen=True)
class Degradation:
    """Knobs that make an honestly weak model: the data really is worse, nothing is faked.

    ``label_noise`` replaces that fraction of training labels with random classes;
    ``train_fraction`` keeps only that fraction of the training split.
    """

    label_noise: float = 0.0
    train_fraction: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_noise <= 1.0:
            raise ValueError(f"label_noise must be within [0, 1], got {self.label_noise}")
        if not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(f"train_fraction must be within (0, 1], got {self.train_fraction}")


def split_dataset(
    frame: pd.DataFrame, test_fraction: float, seed: int, degradation: Degradation = Degradation()
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified split; degradation touches the training split only, never the test split."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be within (0, 1), got {test_fraction}")
    train, test = train_test_split(
        frame, test_size=test_fraction, random_state=seed, stratify=frame[LABEL]
    )
    rng = np.random.default_rng(seed)
    if degradation.train_fraction < 1.0:
        keep = max(len(CLASSES), round(len(train) * degradation.train_fraction))
        train = train.iloc[rng.permutation(len(train))[:keep]]
    if degradation.label_noise > 0.0:
        train = train.copy()
        noisy = rng.random(len(train)) < degradation.label_noise
        train.loc[noisy, LABEL] = rng.integers(0, len(CLASSES), int(noisy.sum()))
    return train.reset_index(drop=True), test.reset_index(drop=True)
