"""Tampered artifacts handed to the gate: the candidate predictor refuses them, the rollout
fails before any traffic with the predictor's own reason, and no attacker code runs.

The attacker can write the registry folder but holds no trusted signing key. The gate
pins the model digest at create time and hands it to the candidate (``--model_digest``),
so bytes swapped in after the rollout was created are refused too.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import time
from pathlib import Path

import pytest
import skops.io
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from predictor import signing
from predictor.artifact import METADATA_FILE, SIGNATURE_FILE
from tests.gate_stack import TEST_MARGINS, LocalStack, build_registry
from tests.payloads import PickleBomb, SkopsBomb

pytestmark = pytest.mark.integration


def model_file(version_dir: Path) -> Path:
    manifest = json.loads((version_dir / METADATA_FILE).read_text())
    return version_dir / str(manifest["model_file"])


def resign(version_dir: Path, key: Ed25519PrivateKey) -> None:
    """Point the manifest at the file now there and sign it with the attacker's key."""
    path = version_dir / METADATA_FILE
    document = json.loads(path.read_text())
    document["sha256"] = hashlib.sha256(model_file(version_dir).read_bytes()).hexdigest()
    manifest = (json.dumps(document, indent=2) + "\n").encode()
    path.write_bytes(manifest)
    (version_dir / SIGNATURE_FILE).write_bytes(signing.sign(manifest, key))


def create(stack: LocalStack, version_dir: Path) -> str:
    return stack.create(version_dir.name, steps=[50, 100], step_interval_s=1.5, **TEST_MARGINS)


@pytest.mark.parametrize(
    ("attack", "reason"),
    [
        ("swapped-model-file", "sha256"),
        ("manifest-resigned-by-another-key", "signature does not verify"),
        # a careless or compromised signer: the type allow-list still holds
        ("untrusted-type-signed-by-the-trusted-key", "untrusted types in model file"),
    ],
)
def test_a_tampered_candidate_never_runs_and_never_gets_traffic(
    tmp_path: Path, attack: str, reason: str
) -> None:
    registry = build_registry(tmp_path / "a")
    candidate = registry / "iris" / "2"
    marker = tmp_path / "MARKER"
    model_file(candidate).write_bytes(pickle.dumps(PickleBomb(marker)))
    if attack == "manifest-resigned-by-another-key":
        resign(candidate, Ed25519PrivateKey.generate())
    if attack == "untrusted-type-signed-by-the-trusted-key":
        model_file(candidate).write_bytes(skops.io.dumps(SkopsBomb(marker)))
        resign(candidate, signing.default_signing_key())  # what the registry signed with
    stack = LocalStack(tmp_path, registry)
    try:
        stack.start_router()
        stack.start_gate()
        detail = stack.wait_phase(create(stack, candidate), {"failed", "succeeded"})
        assert detail["phase"] == "failed"
        assert "refusing to start" in detail["message"], detail["message"]
        assert reason in detail["message"], detail["message"]
        assert [d["canary_weight"] for d in detail["decisions"]] == [0] * len(detail["decisions"])
        assert not marker.exists(), "the payload ran"
        assert stack.routes()["canary"] is None
    finally:
        stack.stop()


def test_bytes_swapped_after_the_digest_was_pinned_are_refused(tmp_path: Path) -> None:
    """A validly signed but different model put in place between create and start."""
    registry = build_registry(tmp_path / "a", classifiers=("logreg", "logreg", "forest"))
    candidate, other = registry / "iris" / "2", registry / "iris" / "3"
    stack = LocalStack(tmp_path, registry)
    stack.env["GATE_CANARY_ARGS"] = "--fault_start_delay_s 3"  # room to swap the files
    try:
        stack.start_router()
        stack.start_gate()
        pinned = "sha256:" + json.loads((candidate / METADATA_FILE).read_text())["sha256"]
        rollout = create(stack, candidate)
        time.sleep(0.5)
        for name in (METADATA_FILE, SIGNATURE_FILE, model_file(other).name):
            shutil.copy2(other / name, candidate / name)
        detail = stack.wait_phase(rollout, {"failed", "succeeded"})
        assert detail["phase"] == "failed"
        assert detail["candidate"]["digest"] == pinned
        assert "refusing to start" in detail["message"], detail["message"]
        assert pinned.removeprefix("sha256:")[:12] in detail["message"], detail["message"]
    finally:
        stack.stop()
