"""Reading the split files preprocess writes (a header, then one row of numbers per
sample), for train and evaluate.

Read with the standard ``csv`` module and numpy rather than pandas: pandas is preprocess's
dependency only, and keeping it out of the train and evaluate images saves them ~70 MB.
``float()`` reads back exactly the shortest representation preprocess wrote.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from pipeline.steps.common import FEATURES, LABEL, DataError


def read_split(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Features (float64, one column per :data:`FEATURES` name) and labels (int64)."""
    with open(path, newline="") as file:
        rows = [row for row in csv.reader(file) if row]
    if not rows:
        raise DataError(f"{path}: empty split file")
    header, body = rows[0], rows[1:]
    missing = [column for column in [*FEATURES, LABEL] if column not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    at = [header.index(column) for column in FEATURES]
    label_at = header.index(LABEL)
    try:
        features = np.array(
            [[float(row[i]) for i in at] for row in body], dtype=np.float64
        ).reshape(len(body), len(FEATURES))
        labels = np.array([int(row[label_at]) for row in body], dtype=np.int64)
    except (ValueError, IndexError) as exc:
        raise DataError(f"{path}: not a split file preprocess wrote ({exc})") from exc
    return features, labels
