"""Pipeline steps as plain functions: data validation, split, train, evaluate, register."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from pipeline.steps.common import CLASSES, FEATURES, LABEL, DataError, TrainParams
from pipeline.steps.deploy import register_model
from pipeline.steps.evaluate import evaluate_model
from pipeline.steps.preprocess import Degradation, load_dataset, split_dataset
from pipeline.steps.reject import record_rejection
from pipeline.steps.splits import read_split
from pipeline.steps.train import train_model
from predictor.artifact import registry_versions, verify_artifact

HEADER = "sepal_length,sepal_width,petal_length,petal_width,species"
GOOD_ROWS = [
    HEADER,
    "5.1,3.5,1.4,0.2,setosa",
    "4.9,3.0,1.4,0.2,setosa",
    "7.0,3.2,4.7,1.4,versicolor",
    "6.4,3.2,4.5,1.5,1",
    "6.3,3.3,6.0,2.5,virginica",
    "5.8,2.7,5.1,1.9,virginica",
]


def write_csv(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "data.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def replace_line(number: int, text: str) -> Callable[[list[str]], list[str]]:
    """Edit for the file line ``number`` (the header is line 1)."""
    return lambda rows: [*rows[: number - 1], text, *rows[number:]]


def test_default_data_is_iris() -> None:
    frame = load_dataset(None)
    assert list(frame.columns) == [*FEATURES, LABEL]
    assert len(frame) == 150
    assert sorted(frame[LABEL].unique().tolist()) == [0, 1, 2]


def test_user_csv_accepts_names_and_ids(tmp_path: Path) -> None:
    frame = load_dataset(str(write_csv(tmp_path, GOOD_ROWS)))
    assert frame[LABEL].tolist() == [0, 0, 1, 1, 2, 2]
    assert frame["petal_width"].dtype == "float64"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            replace_line(1, HEADER.replace("petal_width", "petal_wide")),
            "missing column 'petal_width'",
        ),
        (
            replace_line(3, "4.9,abc,1.4,0.2,setosa"),
            "line 3: column 'sepal_width' value 'abc' is not a number",
        ),
        (
            replace_line(4, "7.0,3.2,,1.4,versicolor"),
            "line 4: missing value in column 'petal_length'",
        ),
        (
            replace_line(6, "6.3,3.3,6.0,2.5,rose"),
            "line 6: unknown class 'rose' in column 'species'",
        ),
        (
            replace_line(2, "nan,3.5,1.4,0.2,setosa"),
            "line 2: column 'sepal_length' value 'nan' is not a finite number",
        ),
        (lambda rows: rows[:1], "no data rows"),
        (lambda rows: [*rows[:2], *rows[3:]], "class 'setosa' needs at least 2 rows"),
    ],
)
def test_bad_csv_names_column_and_line(
    tmp_path: Path, edit: Callable[[list[str]], list[str]], message: str
) -> None:
    path = write_csv(tmp_path, edit(list(GOOD_ROWS)))
    with pytest.raises(DataError) as caught:
        load_dataset(str(path))
    assert message in str(caught.value)
    assert str(path) in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_dataset(str(tmp_path / "absent.csv"))


def test_split_is_stratified_and_degradation_spares_the_test_split() -> None:
    frame = load_dataset(None)
    train, test = split_dataset(frame, 0.3, 7)
    assert len(test) == 45 and test[LABEL].value_counts().tolist() == [15, 15, 15]
    noisy_train, noisy_test = split_dataset(frame, 0.3, 7, Degradation(label_noise=0.8))
    pd.testing.assert_frame_equal(test, noisy_test)
    assert (noisy_train[LABEL] != train[LABEL]).mean() > 0.3
    small_train, _ = split_dataset(frame, 0.3, 7, Degradation(train_fraction=0.1))
    assert len(small_train) == round(len(train) * 0.1)
    with pytest.raises(ValueError):
        Degradation(label_noise=1.5)


def test_a_split_reads_back_exactly_as_written(tmp_path: Path) -> None:
    """train and evaluate read preprocess's CSV without pandas, to the last bit."""
    train, _ = split_dataset(load_dataset(None), 0.3, 7, Degradation(label_noise=0.5))
    train.to_csv(tmp_path / "train.csv", index=False)
    features, labels = read_split(tmp_path / "train.csv")
    assert features.dtype == "float64" and labels.dtype == "int64"
    assert (features == train[FEATURES].to_numpy()).all()
    assert (labels == train[LABEL].to_numpy()).all()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty split file"),
        ("sepal_length,sepal_width,petal_length,species\n1,2,3,0\n", "missing column"),
        (",".join([*FEATURES, LABEL]) + "\n1,2,x,4,0\n", "not a split file"),
        (",".join([*FEATURES, LABEL]) + "\n1,2,3\n", "not a split file"),
    ],
)
def test_a_bad_split_file_says_so(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "split.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        read_split(tmp_path / "split.csv")


def _prepare(tmp_path: Path, degradation: Degradation | None = None) -> tuple[Path, Path]:
    train, test = split_dataset(load_dataset(None), 0.3, 7, degradation or Degradation())
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    return tmp_path / "train.csv", tmp_path / "test.csv"


@pytest.mark.parametrize("classifier", ["logreg", "forest"])
def test_train_evaluate_register(tmp_path: Path, classifier: str) -> None:
    train_csv, test_csv = _prepare(tmp_path)
    metadata = train_model(
        train_csv, tmp_path / "model", "iris", TrainParams(classifier=classifier, n_estimators=20)
    )
    assert metadata["version"] == "0"
    evaluation = evaluate_model(tmp_path / "model", test_csv)
    assert evaluation.accuracy > 0.9
    assert sum(map(sum, evaluation.confusion)) == 45
    assert set(evaluation.per_class) == set(CLASSES)
    registry = tmp_path / "registry"
    record = register_model(tmp_path / "model", test_csv, registry, evaluation.flat_metrics())
    assert record["version"] == "1"
    registered = verify_artifact(record["path"])
    assert registered.metrics["accuracy"] == evaluation.accuracy
    assert "setosa_f1" in registered.metrics
    assert (Path(record["path"]) / "holdout.csv").read_text() == test_csv.read_text()


def test_weak_model_is_honestly_weak(tmp_path: Path) -> None:
    train_csv, test_csv = _prepare(tmp_path, Degradation(label_noise=0.8))
    train_model(train_csv, tmp_path / "model", "iris", TrainParams())
    assert evaluate_model(tmp_path / "model", test_csv).accuracy < 0.9


def test_rejection_registers_no_version(tmp_path: Path) -> None:
    record = record_rejection(tmp_path, "iris", 0.61, 0.9, "sha256:abc")
    assert record["outcome"] == "rejected"
    assert "0.6100 is below the threshold 0.9000" in record["reason"]
    assert json.loads(Path(record["path"]).read_text())["accuracy"] == 0.61
    assert registry_versions(tmp_path, "iris") == []


def test_train_params_reject_unknown_classifier() -> None:
    with pytest.raises(ValueError, match="classifier must be one of"):
        TrainParams(classifier="svm")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"c": 0.0}, "c must be a finite number above 0, got 0.0"),
        ({"c": float("nan")}, "c must be a finite number above 0, got nan"),
        ({"max_iter": 0}, "max_iter must be at least 1, got 0"),
        ({"n_estimators": -1}, "n_estimators must be at least 1, got -1"),
        ({"max_depth": -2}, "max_depth must be 0 (unlimited) or more, got -2"),
        ({"seed": -1}, "seed must be within [0, 2**32), got -1"),
    ],
)
def test_train_params_say_which_number_is_out_of_range(
    params: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError) as caught:
        TrainParams(**params)  # type: ignore[arg-type]
    assert str(caught.value) == message
