"""Compile-time cluster settings, and ``run``'s own input checks: what a cluster or a run
would reject later is a one-line error now."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.__main__ import main
from pipeline.cluster import (
    ClusterConfigError,
    ComponentImages,
    SecretRef,
    is_fully_qualified,
)


@pytest.mark.parametrize(
    ("image", "qualified"),
    [
        ("ghcr.io/acme/irisgate-pipeline-train:3f2c1ab", True),
        ("localhost:5000/irisgate-pipeline-train:dev", True),
        ("localhost/irisgate:1", True),
        ("registry.example.com:5000/a/b/c:v1.2_3", True),
        ("ghcr.io/acme/p@sha256:" + "0" * 64, True),
        ("ghcr.io/acme/p:1@sha256:" + "0" * 64, True),
        ("irisgate-pipeline:0.1.0", False),  # no registry: the runtime guesses docker.io
        ("acme/irisgate:1", False),
        ("ghcr.io/acme/irisgate", False),  # no tag: "latest" by accident
        ("ghcr.io/Acme/irisgate:1", False),  # repositories are lowercase
        ("ghcr.io/acme/irisgate:", False),
        ("ghcr.io/acme/irisgate:.x", False),
        ("ghcr.io/acme/p@sha256:abc", False),
        ("ghcr.io//irisgate:1", False),
        ("ghcr.io/" + "a" * 250 + ":1", False),
    ],
)
def test_fully_qualified_images(image: str, qualified: bool) -> None:
    assert is_fully_qualified(image) is qualified


def test_step_images_are_distinct_and_qualified() -> None:
    images = ComponentImages(prefix="ghcr.io/acme/irisgate", tag="abc")
    assert images.for_step("train") == "ghcr.io/acme/irisgate-pipeline-train:abc"
    assert images.for_step("deploy") != images.for_step("train")
    assert not images.is_placeholder and ComponentImages().is_placeholder
    assert is_fully_qualified(ComponentImages().for_step("notify"))
    single = ComponentImages(single="ghcr.io/acme/p:1")
    assert single.for_step("train") == single.for_step("notify") == "ghcr.io/acme/p:1"


def test_bad_settings_fail_when_built() -> None:
    with pytest.raises(ClusterConfigError, match="--tag 'a b'"):
        ComponentImages(tag="a b")
    with pytest.raises(ClusterConfigError, match="--image 'x:1'"):
        ComponentImages(single="x:1")
    with pytest.raises(ClusterConfigError, match="--gate-secret 'x_y'"):
        SecretRef("x_y", "token", "--gate-secret")
    with pytest.raises(ClusterConfigError, match="--gate-secret-key 'a b'"):
        SecretRef("gate", "a b", "--gate-secret")
    with pytest.raises(ClusterConfigError, match="longer than 229 characters"):
        ComponentImages(prefix="ghcr.io/" + "a" * 222)
    assert is_fully_qualified(ComponentImages(prefix="ghcr.io/" + "a" * 221).for_step("preprocess"))
    with pytest.raises(ClusterConfigError, match="--gate-secret '"):
        SecretRef("a" * 254, "token", "--gate-secret")


@pytest.mark.parametrize(
    ("flags", "env", "problem"),
    [
        ([], {"PIPELINE_WEBHOOK_URL": "hooks.example.com/secret"}, "PIPELINE_WEBHOOK_URL must"),
        (["--c", "0"], {}, "c must be a finite number above 0, got 0.0"),
        (["--n-estimators", "0"], {}, "n_estimators must be at least 1, got 0"),
        (["--seed", "-1"], {}, "seed must be within [0, 2**32), got -1"),
    ],
)
def test_run_checks_its_inputs_before_kfp_starts(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    env: dict[str, str],
    problem: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["run", "--registry", str(tmp_path / "r"), *flags]) == 2
    err = capsys.readouterr().err
    assert problem in err and err.count("\n") == 1
    assert "secret" not in err  # the webhook URL is a secret: never echoed
    assert not (tmp_path / "r").exists()
