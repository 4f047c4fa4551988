"""The deploy step's two modes, told apart by the model artifact's URI: a plain path
(KFP's local runner) registers a copy; an object-store URI (a cluster) is handed over as
it is, ``minio://`` spelled ``s3://``, under a version derived from the run id."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.steps.common import TrainParams
from pipeline.steps.deploy import RUN_VERSION_DIGITS, run_version, storage_uri, stored_model
from pipeline.steps.preprocess import load_dataset, split_dataset
from pipeline.steps.train import train_model
from predictor.artifact import ArtifactError, read_metadata


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (
            "minio://mlpipeline/v2/artifacts/p/r/train/1/model",
            "s3://mlpipeline/v2/artifacts/p/r/train/1/model",
        ),
        ("MINIO://mlpipeline/v2/x", "s3://mlpipeline/v2/x"),
        (
            "s3://bucket/v2/artifacts/p/r/train/1/model",
            "s3://bucket/v2/artifacts/p/r/train/1/model",
        ),
        ("gs://bucket/root/p/r/train/1/model", "gs://bucket/root/p/r/train/1/model"),
        ("/tmp/kfp/local_outputs/train/model", None),  # the local runner's: a path
        ("relative/model", None),
    ],
)
def test_the_artifact_uri_maps_to_what_kserve_and_the_gate_read(
    uri: str, expected: str | None
) -> None:
    assert storage_uri(uri) == expected


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("oci://registry.example/model:1", "scheme oci:// is not an object store"),
        ("file:///tmp/model", "scheme file:// is not an object store"),
        ("https://bucket.example/model", "scheme https:// is not an object store"),
        ("minio://mlpipeline", "expected minio://BUCKET/KEY"),
        ("s3:///model", "expected s3://BUCKET/KEY"),
    ],
)
def test_any_other_uri_is_refused_naming_it(uri: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        storage_uri(uri)


def test_the_run_version_is_the_runs_own_and_digits_only() -> None:
    version = run_version("3f0c2a1e-7d4b-4c1a-9e2f-5b6a7c8d9e0f")
    assert version.isdigit() and len(version) == RUN_VERSION_DIGITS == 15
    assert run_version("3f0c2a1e-7d4b-4c1a-9e2f-5b6a7c8d9e0f") == version  # a retried pod
    others = {run_version(f"run-{n}") for n in range(2000)}
    assert len(others) == 2000 and version not in others
    for bad in ("", "../x", "a b", "x" * 129):
        with pytest.raises(ValueError, match="run id"):
            run_version(bad)


def test_the_model_and_its_split_must_be_in_the_same_kind_of_place(tmp_path: Path) -> None:
    train, test = split_dataset(load_dataset(None), 0.3, 7)
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    train_model(tmp_path / "train.csv", tmp_path / "model", "iris", TrainParams())
    record = stored_model(
        tmp_path / "model",
        "minio://mlpipeline/v2/a/r/train/1/model",
        "minio://mlpipeline/v2/a/r/preprocess/1/test_data",
        "r",
        {"accuracy": 0.97},
    )
    assert record == {
        "outcome": "deployed",
        "name": "iris",
        "version": run_version("r"),
        "digest": read_metadata(tmp_path / "model").digest,
        "path": "s3://mlpipeline/v2/a/r/train/1/model",
        "accuracy": 0.97,
        "holdout": "s3://mlpipeline/v2/a/r/preprocess/1/test_data",
    }
    with pytest.raises(ValueError, match="must both be in an object store, or both local"):
        stored_model(
            tmp_path / "model",
            "minio://mlpipeline/v2/a/r/train/1/model",
            str(tmp_path / "test.csv"),
            "r",
            {"accuracy": 0.97},
        )
    (tmp_path / "model" / "model.json.sig").unlink()
    with pytest.raises(ArtifactError, match="signature file is missing"):
        stored_model(
            tmp_path / "model",
            "s3://b/m/model",
            "s3://b/m/test_data",
            "r",
            {"accuracy": 0.97},
        )
