"""The artifact contract: written, verified, refused - and nothing unverified unpickled."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import joblib
import pytest
import sklearn

from predictor.artifact import (
    METADATA_FILE,
    MODEL_FILE,
    ArtifactError,
    fingerprint_dataset,
    load_artifact,
    register_artifact,
    registry_versions,
    verify_artifact,
    write_artifact,
)
from tests.helpers import IRIS_CLASSES, IRIS_FEATURES, make_artifact, train_iris


class _Booby:
    """Unpickling this creates a marker file: proof that a pickle was opened."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def _edit_metadata(directory: Path, **changes: object) -> None:
    path = directory / METADATA_FILE
    document = json.loads(path.read_text())
    document.update(changes)
    path.write_text(json.dumps(document))


def test_round_trip(tmp_path: Path) -> None:
    directory = make_artifact(tmp_path / "a")
    estimator, metadata = load_artifact(directory)
    assert metadata.name == "iris" and metadata.version == "1"
    assert metadata.feature_names == IRIS_FEATURES
    assert metadata.class_names == IRIS_CLASSES
    assert metadata.sklearn_version == sklearn.__version__
    assert metadata.training_data_fingerprint.startswith("sha256:")
    assert 0.9 < metadata.metrics["accuracy"] <= 1.0
    assert estimator.predict([[5.1, 3.5, 1.4, 0.2]]).tolist() == [0]


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    directory = make_artifact(tmp_path / "a")
    with pytest.raises(ArtifactError, match="never overwritten"):
        make_artifact(directory)


def test_tampered_model_is_never_unpickled(tmp_path: Path) -> None:
    directory = make_artifact(tmp_path / "a")
    marker = tmp_path / "unpickled"
    with (directory / MODEL_FILE).open("wb") as handle:
        pickle.dump(_Booby(marker), handle)
    with pytest.raises(ArtifactError) as caught:
        load_artifact(directory)
    assert "sha256 mismatch" in str(caught.value)
    assert str(directory / MODEL_FILE) in str(caught.value)
    assert "\n" not in str(caught.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"sklearn_version": "0.24.2"}, "written with scikit-learn 0.24.2"),
        ({"sha256": "not-a-hash"}, "invalid metadata field 'sha256'"),
        ({"name": "Iris Model"}, "invalid metadata field 'name'"),
        ({"class_names": ["only-one"]}, "invalid metadata field 'class_names'"),
        ({"surprise": 1}, "invalid metadata field 'surprise'"),
        ({"format_version": 99}, "unsupported format_version 99"),
    ],
)
def test_bad_metadata_is_refused(tmp_path: Path, change: dict[str, object], expected: str) -> None:
    directory = make_artifact(tmp_path / "a")
    _edit_metadata(directory, **change)
    with pytest.raises(ArtifactError, match=expected):
        verify_artifact(directory)


def test_same_major_minor_patch_difference_is_accepted(tmp_path: Path) -> None:
    directory = make_artifact(tmp_path / "a")
    major, minor = sklearn.__version__.split(".")[:2]
    _edit_metadata(directory, sklearn_version=f"{major}.{minor}.999")
    assert verify_artifact(directory).sklearn_version.endswith(".999")


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda d: (d / METADATA_FILE).unlink(), "metadata file is missing"),
        (lambda d: (d / MODEL_FILE).unlink(), "model file is missing"),
        (lambda d: (d / METADATA_FILE).write_text("{oops"), "not valid JSON"),
        (lambda d: (d / METADATA_FILE).write_text("[1]"), "must be a JSON object"),
    ],
)
def test_missing_or_broken_files(tmp_path: Path, setup: object, expected: str) -> None:
    directory = make_artifact(tmp_path / "a")
    setup(directory)  # type: ignore[operator]
    with pytest.raises(ArtifactError, match=expected):
        verify_artifact(directory)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        verify_artifact(tmp_path / "nowhere")


def test_estimator_must_match_metadata(tmp_path: Path) -> None:
    model, features, labels = train_iris()
    with pytest.raises(ArtifactError, match="expects 4 features but metadata names 3"):
        write_artifact(
            model,
            tmp_path / "a",
            name="iris",
            version="1",
            feature_names=IRIS_FEATURES[:3],
            class_names=IRIS_CLASSES,
            training_data_fingerprint=fingerprint_dataset(features, labels),
        )
    with pytest.raises(ArtifactError, match="not fitted"):
        from sklearn.linear_model import LogisticRegression

        write_artifact(
            LogisticRegression(),
            tmp_path / "b",
            name="iris",
            version="1",
            feature_names=IRIS_FEATURES,
            class_names=IRIS_CLASSES,
            training_data_fingerprint="x",
        )


def test_verified_hash_but_wrong_object_is_refused_after_load(tmp_path: Path) -> None:
    """A correctly hashed pickle of something unservable is still refused."""
    directory = make_artifact(tmp_path / "a")
    joblib.dump({"not": "a model"}, directory / MODEL_FILE)
    from predictor.artifact import sha256_file

    _edit_metadata(directory, sha256=sha256_file(directory / MODEL_FILE))
    with pytest.raises(ArtifactError, match="no predict"):
        load_artifact(directory)


def test_fingerprint_is_stable_and_sensitive() -> None:
    _, features, labels = train_iris()
    assert fingerprint_dataset(features, labels) == fingerprint_dataset(features.copy(), labels)
    changed = features.copy()
    changed[0, 0] += 0.1
    assert fingerprint_dataset(changed, labels) != fingerprint_dataset(features, labels)


def test_registry_assigns_versions_and_never_overwrites(tmp_path: Path) -> None:
    source = make_artifact(tmp_path / "src")
    extra = tmp_path / "test.csv"
    extra.write_text("a,b\n")
    registry = tmp_path / "registry"
    first, first_dir = register_artifact(
        source, registry, extra_files={"holdout.csv": extra}, metrics={"accuracy": 0.5}
    )
    second, second_dir = register_artifact(source, registry)
    assert (first.version, second.version) == ("1", "2")
    assert first_dir == registry / "iris" / "1" and (first_dir / "holdout.csv").exists()
    assert first.metrics["accuracy"] == 0.5 and second.metrics["accuracy"] > 0.9
    assert registry_versions(registry, "iris") == ["1", "2"]
    assert verify_artifact(second_dir).version == "2"
    assert verify_artifact(first_dir).version == "1"
    assert not [p for p in (registry / "iris").iterdir() if p.name.startswith(".")]
