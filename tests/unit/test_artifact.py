"""The artifact contract: written, signed, verified, refused - and nothing unverified loaded."""

from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pytest
import sklearn
import skops.io
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from predictor import signing
from predictor.artifact import (
    METADATA_FILE,
    MODEL_FILE,
    PICKLE_MODEL_FILE,
    SIGNATURE_FILE,
    TRUSTED_TYPES,
    ArtifactError,
    fingerprint_dataset,
    load_artifact,
    register_artifact,
    registry_versions,
    untrusted_types,
    verify_artifact,
    write_artifact,
)
from predictor.fastpath import compile_fast_path
from predictor.signing import TrustedKey
from tests.helpers import IRIS_CLASSES, IRIS_FEATURES, make_artifact, train_iris


class _Booby:
    """Unpickling this creates a marker file: proof that a pickle was opened."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def trusted(key: Ed25519PrivateKey) -> list[TrustedKey]:
    return [TrustedKey("test", key.public_key())]


def _edit_metadata(directory: Path, key: Ed25519PrivateKey, **changes: object) -> None:
    """Change model.json and sign it again: a bad manifest from a legitimate writer."""
    path = directory / METADATA_FILE
    document = json.loads(path.read_text())
    document.update(changes)
    data = json.dumps(document).encode()
    path.write_bytes(data)
    (directory / SIGNATURE_FILE).write_bytes(signing.sign(data, key))


def test_round_trip(tmp_path: Path, key: Ed25519PrivateKey, trusted: list[TrustedKey]) -> None:
    directory = make_artifact(tmp_path / "a", signing_key=key)
    assert sorted(p.name for p in directory.iterdir()) == [
        METADATA_FILE,
        SIGNATURE_FILE,
        MODEL_FILE,
    ]
    estimator, metadata = load_artifact(directory, trusted_keys=trusted)
    assert metadata.name == "iris" and metadata.version == "1"
    assert (metadata.format, metadata.model_file) == ("skops", MODEL_FILE)
    assert metadata.digest == f"sha256:{metadata.sha256}"
    assert metadata.feature_names == IRIS_FEATURES
    assert metadata.class_names == IRIS_CLASSES
    assert metadata.sklearn_version == sklearn.__version__
    assert metadata.training_data_fingerprint.startswith("sha256:")
    assert 0.9 < metadata.metrics["accuracy"] <= 1.0
    assert estimator.predict([[5.1, 3.5, 1.4, 0.2]]).tolist() == [0]


@pytest.mark.parametrize("classifier", ["logreg", "forest"])
def test_skops_round_trip_keeps_predictions_and_fast_path(
    tmp_path: Path, key: Ed25519PrivateKey, trusted: list[TrustedKey], classifier: str
) -> None:
    original, features, _ = train_iris(classifier)
    directory = make_artifact(tmp_path / "a", classifier=classifier, signing_key=key)
    loaded, _ = load_artifact(directory, trusted_keys=trusted)
    rows = np.vstack([features, np.random.default_rng(0).normal(0, 4, (200, 4))])
    assert np.array_equal(loaded.predict_proba(rows), original.predict_proba(rows))
    fast = compile_fast_path(loaded).fast_path
    assert fast is not None
    assert np.allclose(fast.predict_proba(rows), original.predict_proba(rows), atol=1e-9)


@pytest.mark.parametrize("classifier", ["logreg", "forest"])
def test_trusted_types_are_exactly_what_the_project_needs(classifier: str) -> None:
    from pipeline.steps.common import TrainParams
    from pipeline.steps.train import build_estimator

    features, labels = train_iris()[1:]
    for estimator in (
        build_estimator(TrainParams(classifier=classifier, n_estimators=5)).fit(features, labels),
        train_iris(classifier)[0],
    ):
        data = skops.io.dumps(estimator)
        assert set(skops.io.get_untrusted_types(data=data)) <= set(TRUSTED_TYPES)
        assert untrusted_types(data, "x") == []
    assert "sklearn.tree._tree.Tree" in TRUSTED_TYPES


def test_unknown_type_is_refused_by_name(
    tmp_path: Path, key: Ed25519PrivateKey, trusted: list[TrustedKey]
) -> None:
    from sklearn.naive_bayes import GaussianNB

    _, features, labels = train_iris()
    with pytest.raises(ArtifactError, match=r"sklearn\.naive_bayes\.GaussianNB"):
        write_artifact(
            GaussianNB().fit(features, labels),
            tmp_path / "a",
            name="iris",
            version="1",
            feature_names=IRIS_FEATURES,
            class_names=IRIS_CLASSES,
            training_data_fingerprint="x",
            signing_key=key,
        )
    # written by someone with the key but outside the reviewed list: refused at load
    directory = make_artifact(tmp_path / "b", signing_key=key)
    data = skops.io.dumps(GaussianNB().fit(features, labels))
    (directory / MODEL_FILE).write_bytes(data)
    import hashlib

    _edit_metadata(directory, key, sha256=hashlib.sha256(data).hexdigest())
    with pytest.raises(ArtifactError, match=r"untrusted types in model file: .*GaussianNB"):
        load_artifact(directory, trusted_keys=trusted)


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    directory = make_artifact(tmp_path / "a")
    with pytest.raises(ArtifactError, match="never overwritten"):
        make_artifact(directory)


def test_tampered_model_is_never_unpickled(
    tmp_path: Path, key: Ed25519PrivateKey, trusted: list[TrustedKey]
) -> None:
    directory = make_artifact(tmp_path / "a", signing_key=key)
    marker = tmp_path / "unpickled"
    with (directory / MODEL_FILE).open("wb") as handle:
        pickle.dump(_Booby(marker), handle)
    with pytest.raises(ArtifactError) as caught:
        load_artifact(directory, trusted_keys=trusted)
    assert "sha256 mismatch" in str(caught.value)
    assert str(directory / MODEL_FILE) in str(caught.value)
    assert "\n" not in str(caught.value)
    assert not marker.exists()


def test_pickle_needs_the_opt_in(
    tmp_path: Path,
    key: Ed25519PrivateKey,
    trusted: list[TrustedKey],
    caplog: pytest.LogCaptureFixture,
) -> None:
    directory = make_artifact(tmp_path / "a", signing_key=key, model_format="joblib")
    assert (directory / PICKLE_MODEL_FILE).is_file()
    with pytest.raises(ArtifactError, match="refused without --allow_pickle"):
        load_artifact(directory, trusted_keys=trusted)
    with caplog.at_level("WARNING"):
        estimator, metadata = load_artifact(directory, trusted_keys=trusted, allow_pickle=True)
    assert metadata.format == "joblib" and estimator.predict([[5.1, 3.5, 1.4, 0.2]]).tolist() == [0]
    assert "executed as code" in caplog.text


def test_pinned_digest(tmp_path: Path, key: Ed25519PrivateKey, trusted: list[TrustedKey]) -> None:
    directory = make_artifact(tmp_path / "a", signing_key=key)
    metadata = verify_artifact(directory, trusted_keys=trusted)
    assert verify_artifact(directory, trusted_keys=trusted, expected_digest=metadata.digest)
    with pytest.raises(ArtifactError, match="digest mismatch: pinned"):
        verify_artifact(directory, trusted_keys=trusted, expected_digest="sha256:" + "0" * 64)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"sklearn_version": "0.24.2"}, "written with scikit-learn 0.24.2"),
        ({"sha256": "not-a-hash"}, "invalid metadata field 'sha256'"),
        ({"name": "Iris Model"}, "invalid metadata field 'name'"),
        ({"class_names": ["only-one"]}, "invalid metadata field 'class_names'"),
        ({"surprise": 1}, "invalid metadata field 'surprise'"),
        ({"format_version": 99}, "unsupported format_version 99"),
        ({"model_file": "../model.skops"}, "invalid metadata field 'model_file'"),
        ({"format": "pickle"}, "invalid metadata field 'format'"),
    ],
)
def test_bad_metadata_is_refused(
    tmp_path: Path,
    key: Ed25519PrivateKey,
    trusted: list[TrustedKey],
    change: dict[str, object],
    expected: str,
) -> None:
    directory = make_artifact(tmp_path / "a", signing_key=key)
    _edit_metadata(directory, key, **change)
    with pytest.raises(ArtifactError, match=expected):
        verify_artifact(directory, trusted_keys=trusted)


def test_same_major_minor_patch_difference_is_accepted(
    tmp_path: Path, key: Ed25519PrivateKey, trusted: list[TrustedKey]
) -> None:
    directory = make_artifact(tmp_path / "a", signing_key=key)
    major, minor = sklearn.__version__.split(".")[:2]
    _edit_metadata(directory, key, sklearn_version=f"{major}.{minor}.999")
    assert verify_artifact(directory, trusted_keys=trusted).sklearn_version.endswith(".999")


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda d: (d / METADATA_FILE).unlink(), "metadata file is missing"),
        (lambda d: (d / MODEL_FILE).unlink(), "model file is missing"),
        (lambda d: (d / SIGNATURE_FILE).unlink(), "signature file is missing"),
        (lambda d: (d / METADATA_FILE).write_text("{oops"), "signature does not verify"),
        (lambda d: (d / SIGNATURE_FILE).write_text("bm9wZQ=="), "not a base64 64-byte"),
    ],
)
def test_missing_or_broken_files(
    tmp_path: Path, trusted: list[TrustedKey], key: Ed25519PrivateKey, setup: object, expected: str
) -> None:
    directory = make_artifact(tmp_path / "a", signing_key=key)
    setup(directory)  # type: ignore[operator]
    with pytest.raises(ArtifactError, match=expected):
        verify_artifact(directory, trusted_keys=trusted)


@pytest.mark.parametrize(
    ("document", "expected"), [(b"{oops", "not valid JSON"), (b"[1]", "must be a JSON object")]
)
def test_signed_but_broken_manifest(
    tmp_path: Path,
    key: Ed25519PrivateKey,
    trusted: list[TrustedKey],
    document: bytes,
    expected: str,
) -> None:
    directory = make_artifact(tmp_path / "a", signing_key=key)
    (directory / METADATA_FILE).write_bytes(document)
    (directory / SIGNATURE_FILE).write_bytes(signing.sign(document, key))
    with pytest.raises(ArtifactError, match=expected):
        verify_artifact(directory, trusted_keys=trusted)


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
    with pytest.raises(ArtifactError, match=r"ids 0\.\.N-1"):
        named = train_iris()[0].fit(features, np.asarray(IRIS_CLASSES)[labels])
        write_artifact(
            named,
            tmp_path / "c",
            name="iris",
            version="1",
            feature_names=IRIS_FEATURES,
            class_names=IRIS_CLASSES,
            training_data_fingerprint="x",
        )


def test_verified_digest_but_wrong_object_is_refused_after_load(
    tmp_path: Path, key: Ed25519PrivateKey, trusted: list[TrustedKey]
) -> None:
    """A correctly signed and hashed file of something unservable is still refused."""
    import hashlib

    directory = make_artifact(tmp_path / "a", signing_key=key)
    data = skops.io.dumps({"not": "a model"})
    (directory / MODEL_FILE).write_bytes(data)
    _edit_metadata(directory, key, sha256=hashlib.sha256(data).hexdigest())
    with pytest.raises(ArtifactError, match="no predict"):
        load_artifact(directory, trusted_keys=trusted)


def test_fingerprint_is_stable_and_sensitive() -> None:
    _, features, labels = train_iris()
    assert fingerprint_dataset(features, labels) == fingerprint_dataset(features.copy(), labels)
    changed = features.copy()
    changed[0, 0] += 0.1
    assert fingerprint_dataset(changed, labels) != fingerprint_dataset(features, labels)


def test_registry_assigns_versions_signs_and_never_overwrites(
    tmp_path: Path, key: Ed25519PrivateKey, trusted: list[TrustedKey]
) -> None:
    source = make_artifact(tmp_path / "src", signing_key=key)
    extra = tmp_path / "test.csv"
    extra.write_text("a,b\n")
    registry = tmp_path / "registry"
    first, first_dir = register_artifact(
        source,
        registry,
        extra_files={"holdout.csv": extra},
        metrics={"accuracy": 0.5},
        trusted_keys=trusted,
        signing_key=key,
    )
    second, second_dir = register_artifact(source, registry, trusted_keys=trusted, signing_key=key)
    assert (first.version, second.version) == ("1", "2")
    assert first_dir == registry / "iris" / "1" and (first_dir / "holdout.csv").exists()
    assert first.metrics["accuracy"] == 0.5 and second.metrics["accuracy"] > 0.9
    assert registry_versions(registry, "iris") == ["1", "2"]
    assert verify_artifact(second_dir, trusted_keys=trusted).version == "2"
    assert verify_artifact(first_dir, trusted_keys=trusted).version == "1"
    assert first.digest == second.digest == verify_artifact(source, trusted_keys=trusted).digest
    assert not [p for p in (registry / "iris").iterdir() if p.name.startswith(".")]
    with pytest.raises(ArtifactError, match="signature does not verify"):
        register_artifact(source, registry)  # the default key did not sign it


def test_registered_versions_are_readable_by_any_user(
    tmp_path: Path, key: Ed25519PrivateKey, trusted: list[TrustedKey]
) -> None:
    """A non-root serving container or KServe's storage initializer must read a version,
    whatever the umask of the process that registered it: mkdtemp alone gives 0700."""
    source = make_artifact(tmp_path / "src", signing_key=key)
    holdout = tmp_path / "holdout.csv"
    holdout.write_text("a,b\n")
    holdout.chmod(0o600)  # as a private step output would be
    previous = os.umask(0o077)
    try:
        _, version_dir = register_artifact(
            source,
            tmp_path / "registry",
            extra_files={"holdout.csv": holdout},
            trusted_keys=trusted,
            signing_key=key,
        )
    finally:
        os.umask(previous)
    assert stat.S_IMODE(version_dir.stat().st_mode) == 0o755
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in version_dir.iterdir()}
    assert modes == dict.fromkeys(
        ["holdout.csv", "model.json", "model.json.sig", "model.skops"], 0o644
    )
