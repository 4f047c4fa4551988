"""Where a candidate may come from: the registry, allowed storage, its own held-out set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gate.confine import confine_candidate
from gate.core.errors import Refused
from gate.core.spec import Candidate
from gate.settings import GateSettings

TOKEN = "test-token-0123456789"


def settings(**changes: Any) -> GateSettings:
    return GateSettings(api_token=TOKEN, **changes)


DIGEST = "sha256:" + "ab" * 32


def candidate(
    artifact_uri: str, holdout_uri: str | None = None, digest: str | None = DIGEST
) -> Candidate:
    return Candidate(
        version="2",
        artifact_uri=artifact_uri,
        offline_metrics={"accuracy": 0.97},
        holdout_uri=holdout_uri,
        digest=digest,
    )


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    root = tmp_path / "registry"
    for version in ("1", "2"):
        (root / "iris" / version).mkdir(parents=True)
        (root / "iris" / version / "holdout.csv").write_text("sepal_length\n")
        (root / "iris" / version / "model.json").write_text(json.dumps({"sha256": "ab" * 32}))
    (tmp_path / "registry-evil" / "iris" / "2").mkdir(parents=True)  # shares the prefix
    return root


def refused(
    field: str,
    artifact_uri: str,
    config: GateSettings,
    holdout_uri: str | None = None,
    digest: str | None = DIGEST,
) -> str:
    with pytest.raises(Refused) as caught:
        confine_candidate(candidate(artifact_uri, holdout_uri, digest), config)
    assert caught.value.field == field
    assert caught.value.status == 422
    assert str(caught.value).startswith(f"{field}: ")
    return caught.value.detail


# --- local backend: the artifact -----------------------------------------------------------


def test_a_version_directory_in_the_registry_is_accepted(registry: Path) -> None:
    config = settings(registry_dir=registry)
    confine_candidate(candidate(str(registry / "iris" / "2")), config)
    confine_candidate(candidate(f"{registry}/iris/2/"), config)


def test_a_relative_path_is_resolved_before_it_is_checked(
    registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(registry.parent)
    confine_candidate(candidate("registry/iris/2"), settings(registry_dir=Path("registry")))


def test_the_registry_defaults_to_the_one_holding_the_stable(registry: Path) -> None:
    config = settings(stable_model_dir=registry / "iris" / "1")
    confine_candidate(candidate(str(registry / "iris" / "2")), config)
    assert "outside the model registry" in refused("candidate.artifact_uri", "/etc", config)


def test_no_registry_configured_refuses_every_artifact(registry: Path) -> None:
    detail = refused("candidate.artifact_uri", str(registry / "iris" / "2"), settings())
    assert "no registry configured (GATE_REGISTRY_DIR)" in detail


@pytest.mark.parametrize(
    ("artifact", "reason"),
    [
        ("/etc", "outside the model registry"),
        ("{tmp}", "outside the model registry"),  # the registry's parent
        ("{registry}", "outside the model registry"),  # the registry itself
        ("{registry}-evil/iris/2", "outside the model registry"),
        ("{registry}/iris/9", "does not exist"),
        ("{registry}/iris/2/holdout.csv", "is not a directory"),
        ("{registry}/iris/2/../../../etc", "'..'"),
        ("{registry}/../registry/iris/2", "'..'"),
        ("file://{registry}/iris/2", "not a URL"),
        ("http://127.0.0.1:9/iris/2", "not a URL"),
        ("gs://models/iris/2", "not a URL"),
        ("/" + "x" * 300 + "/iris/2", "cannot be read"),  # a name longer than NAME_MAX
    ],
)
def test_artifacts_outside_the_registry_are_refused(
    registry: Path, artifact: str, reason: str
) -> None:
    location = artifact.format(registry=registry, tmp=registry.parent)
    detail = refused("candidate.artifact_uri", location, settings(registry_dir=registry))
    assert reason in detail


def test_symlinks_are_followed_then_checked(registry: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (registry / "iris" / "3").symlink_to(outside, target_is_directory=True)
    (registry / "iris" / "4").symlink_to(registry / "iris" / "2", target_is_directory=True)
    (registry / "iris" / "loop").symlink_to(registry / "iris" / "loop")
    config = settings(registry_dir=registry)
    detail = refused("candidate.artifact_uri", str(registry / "iris" / "3"), config)
    assert "outside the model registry" in detail and "symlinks are followed" in detail
    confine_candidate(candidate(str(registry / "iris" / "4")), config)  # stays inside
    refused("candidate.artifact_uri", str(registry / "iris" / "loop"), config)


def test_a_registry_reached_through_a_symlink_still_works(registry: Path, tmp_path: Path) -> None:
    (tmp_path / "current").symlink_to(registry, target_is_directory=True)
    config = settings(registry_dir=tmp_path / "current")
    confine_candidate(candidate(str(registry / "iris" / "2")), config)
    confine_candidate(candidate(str(tmp_path / "current" / "iris" / "2")), config)


# --- local backend: the held-out set ---------------------------------------------------------


def test_the_artifacts_own_holdout_is_accepted(registry: Path, tmp_path: Path) -> None:
    config = settings(registry_dir=registry)
    artifact = registry / "iris" / "2"
    confine_candidate(candidate(str(artifact), None), config)
    confine_candidate(candidate(str(artifact), str(artifact / "holdout.csv")), config)
    (tmp_path / "current").symlink_to(registry, target_is_directory=True)
    via_link = tmp_path / "current" / "iris" / "2"
    confine_candidate(candidate(str(via_link), str(artifact / "holdout.csv")), config)


@pytest.mark.parametrize(
    "holdout",
    [
        "http://127.0.0.1:9/x",  # an internal URL: the gate would fetch it
        "/etc/passwd",
        "{registry}/iris/1/holdout.csv",  # another version's held-out set
        "{registry}/iris/2/../1/holdout.csv",
        "{registry}/iris/2/other.csv",
        "file://{registry}/iris/2/holdout.csv",
    ],
)
def test_any_other_holdout_is_refused(registry: Path, holdout: str) -> None:
    detail = refused(
        "candidate.holdout_uri",
        str(registry / "iris" / "2"),
        settings(registry_dir=registry),
        holdout.format(registry=registry),
    )
    assert "GATE_HOLDOUT_ALLOWED_PREFIXES" in detail


def test_a_holdout_symlinked_elsewhere_is_refused(registry: Path, tmp_path: Path) -> None:
    artifact = registry / "iris" / "2"
    (artifact / "holdout.csv").unlink()
    (artifact / "holdout.csv").symlink_to(tmp_path / "chosen-by-the-client.csv")
    refused(
        "candidate.holdout_uri",
        str(artifact),
        settings(registry_dir=registry),
        str(artifact / "holdout.csv"),
    )


def test_holdouts_under_an_allowed_prefix_are_accepted(registry: Path, tmp_path: Path) -> None:
    shared = tmp_path / "holdouts"
    shared.mkdir()
    config = settings(
        registry_dir=registry,
        holdout_allowed_prefixes=[str(shared), "https://data.example/holdouts/"],
    )
    artifact = str(registry / "iris" / "2")
    confine_candidate(candidate(artifact, str(shared / "iris-2024.csv")), config)
    confine_candidate(candidate(artifact, "https://data.example/holdouts/iris.csv"), config)
    confine_candidate(candidate(artifact, "HTTPS://DATA.EXAMPLE/holdouts/iris.csv"), config)
    for escape in (
        f"{shared}-evil/iris.csv",
        f"{shared}/../registry/iris/1/holdout.csv",
        "https://data.example/holdouts/../admin",
        "https://data.example/holdouts/%2e%2e/admin",
        "https://data.example/holdouts-evil/iris.csv",
        "https://data.example@evil.example/holdouts/iris.csv",
        "https://data.example:8443/holdouts/iris.csv",
        "http://data.example/holdouts/iris.csv",
    ):
        refused("candidate.holdout_uri", artifact, config, escape)


# --- kserve backend --------------------------------------------------------------------------


def kserve(**changes: Any) -> GateSettings:
    return settings(traffic_backend="kserve", **changes)


def test_kserve_refuses_every_uri_until_prefixes_are_configured() -> None:
    detail = refused("candidate.artifact_uri", "gs://models/iris/2", kserve())
    assert "GATE_KSERVE_STORAGE_PREFIXES" in detail


def test_kserve_artifacts_must_lie_under_an_allowed_prefix() -> None:
    config = kserve(kserve_storage_prefixes=["gs://models/iris/", "s3://bucket/iris"])
    confine_candidate(candidate("gs://models/iris/2"), config)
    confine_candidate(candidate("s3://bucket/iris/7/"), config)
    confine_candidate(candidate("gs://models/iris/2", "gs://models/iris/2/holdout.csv"), config)
    for outside, reason in [
        ("gs://models/other/2", "GATE_KSERVE_STORAGE_PREFIXES"),
        ("gs://models/iris-evil/2", "GATE_KSERVE_STORAGE_PREFIXES"),
        ("s3://bucket/iris-evil/2", "GATE_KSERVE_STORAGE_PREFIXES"),
        ("gs://other-bucket/iris/2", "GATE_KSERVE_STORAGE_PREFIXES"),
        ("pvc://models/iris/2", "GATE_KSERVE_STORAGE_PREFIXES"),
        ("/etc", "GATE_KSERVE_STORAGE_PREFIXES"),
        ("gs://models/iris/../secrets", "'..'"),
        ("gs://models/iris/%2E%2E/secrets", "'..'"),
        ("gs://models/iris/2/..", "'..'"),
    ]:
        assert reason in refused("candidate.artifact_uri", outside, config)


def test_kserve_holdouts_are_the_artifacts_own_or_allowed() -> None:
    config = kserve(
        kserve_storage_prefixes=["gs://models/iris/"],
        holdout_allowed_prefixes=["https://data.example/holdouts/"],
    )
    confine_candidate(
        candidate("gs://models/iris/2", "https://data.example/holdouts/a.csv"), config
    )
    for holdout in ("gs://models/iris/1/holdout.csv", "http://127.0.0.1:9/x", "/etc/passwd"):
        refused("candidate.holdout_uri", "gs://models/iris/2", config, holdout)


def test_the_local_backend_pins_the_digest_its_manifest_names(registry: Path) -> None:
    config = settings(registry_dir=registry)
    unpinned = candidate(str(registry / "iris" / "2"), digest=None)
    assert confine_candidate(unpinned, config).digest == DIGEST
    assert confine_candidate(candidate(str(registry / "iris" / "2")), config).digest == DIGEST
    other = "sha256:" + "cd" * 32
    detail = refused("candidate.digest", str(registry / "iris" / "2"), config, digest=other)
    assert "differs from the artifact's manifest" in detail
    (registry / "iris" / "1" / "model.json").unlink()
    assert "model.json" in refused("candidate.artifact_uri", str(registry / "iris" / "1"), config)


def test_the_kserve_backend_requires_a_digest() -> None:
    config = kserve(kserve_storage_prefixes=["gs://models/iris/"])
    assert "required" in refused("candidate.digest", "gs://models/iris/2", config, digest=None)


def test_the_pipelines_object_store_uris_pass_when_its_prefix_is_allowed() -> None:
    """What the deploy step hands over on a cluster: the model and the test split where
    KFP stored them, under one prefix the operator allows for both."""
    prefix = "s3://mlpipeline/v2/artifacts/irisgate-train-evaluate-deploy/"
    config = kserve(kserve_storage_prefixes=[prefix], holdout_allowed_prefixes=[prefix])
    run = f"{prefix}3f0c2a1e-7d4b-4c1a-9e2f-5b6a7c8d9e0f"
    confine_candidate(candidate(f"{run}/train/11/model", f"{run}/preprocess/10/test_data"), config)
    model = f"{run}/train/11/model"
    for holdout in (
        "s3://attacker/holdout.csv",  # a bucket the client names
        "s3://mlpipeline/elsewhere/test_data",  # the same bucket, outside the prefix
        "s3://mlpipeline/v2/artifacts/irisgate-train-evaluate-deploy-evil/r/test_data",
        f"{run}/../../other/test_data",
        "gs://mlpipeline/v2/artifacts/irisgate-train-evaluate-deploy/r/test_data",
    ):
        assert "GATE_HOLDOUT_ALLOWED_PREFIXES" in refused(
            "candidate.holdout_uri", model, config, holdout
        )
