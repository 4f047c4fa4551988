"""An attacker who can write the artifact folder, but holds no signing key, never runs code.

Every case ships a payload that creates a marker file when it is deserialized, starts
``python -m predictor`` on the folder, and expects exit code 3 with one
``predictor: refusing to start: <path>: <reason>`` line, and no marker file.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import skops.io
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from predictor import signing
from predictor.artifact import METADATA_FILE, MODEL_FILE, PICKLE_MODEL_FILE, SIGNATURE_FILE
from tests.helpers import REPO_ROOT, free_port, make_artifact, run_predictor
from tests.payloads import PickleBomb, SkopsBomb

pytestmark = pytest.mark.integration

EXIT_BAD_ARTIFACT = 3
EXIT_PORT_BUSY = 4
REFUSAL = "predictor: refusing to start: "


@pytest.fixture
def release_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def trusted_keys(tmp_path: Path, release_key: Ed25519PrivateKey) -> Path:
    path = tmp_path / "trusted.pub"
    path.write_text(signing.public_key_line(release_key.public_key(), "release"))
    return path


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "MARKER"


def _predictor(model_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "predictor",
            "--model_dir",
            str(model_dir),
            "--http_port",
            str(free_port()),
            "--grpc_port",
            str(free_port()),
            "--workers",
            "1",
            *extra,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _assert_refused(result: subprocess.CompletedProcess[str], reason: str, marker: Path) -> None:
    assert result.returncode == EXIT_BAD_ARTIFACT, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith(REFUSAL)]
    assert len(lines) == 1, result.stderr[-3000:]
    assert reason in lines[0], lines[0]
    assert not marker.exists(), "the payload ran"


def _rewrite_manifest(
    directory: Path, data: bytes, key: Ed25519PrivateKey | None, **changes: str
) -> None:
    """Point model.json at ``data``; sign it with ``key``, or keep the old signature."""
    path = directory / METADATA_FILE
    document = json.loads(path.read_text())
    document.update(changes, sha256=hashlib.sha256(data).hexdigest())
    manifest = (json.dumps(document, indent=2) + "\n").encode()
    path.write_bytes(manifest)
    if key is not None:
        (directory / SIGNATURE_FILE).write_bytes(signing.sign(manifest, key))


def test_pickle_with_rewritten_digest_fails_the_signature(
    tmp_path: Path, release_key: Ed25519PrivateKey, trusted_keys: Path, marker: Path
) -> None:
    artifact = make_artifact(tmp_path / "a", signing_key=release_key)
    payload = pickle.dumps(PickleBomb(marker))
    (artifact / MODEL_FILE).unlink()
    (artifact / PICKLE_MODEL_FILE).write_bytes(payload)
    _rewrite_manifest(artifact, payload, None, model_file=PICKLE_MODEL_FILE, format="joblib")
    for extra in ([], ["--allow_pickle"]):  # even with the pickle opt-in
        result = _predictor(artifact, "--trusted_keys", str(trusted_keys), *extra)
        _assert_refused(result, "signature does not verify", marker)


def test_swapped_model_file_under_a_signed_manifest_fails_the_digest(
    tmp_path: Path, release_key: Ed25519PrivateKey, trusted_keys: Path, marker: Path
) -> None:
    payload = pickle.dumps(PickleBomb(marker))
    skops_artifact = make_artifact(tmp_path / "a", signing_key=release_key)
    (skops_artifact / MODEL_FILE).write_bytes(payload)
    result = _predictor(skops_artifact, "--trusted_keys", str(trusted_keys))
    _assert_refused(result, "sha256 mismatch", marker)
    # a legitimately signed pickle artifact, served with the opt-in: still the digest first
    pickle_artifact = make_artifact(tmp_path / "b", signing_key=release_key, model_format="joblib")
    (pickle_artifact / PICKLE_MODEL_FILE).write_bytes(payload)
    result = _predictor(pickle_artifact, "--trusted_keys", str(trusted_keys), "--allow_pickle")
    _assert_refused(result, "sha256 mismatch", marker)


def test_skops_file_with_an_untrusted_type_is_refused_by_name(
    tmp_path: Path, release_key: Ed25519PrivateKey, trusted_keys: Path, marker: Path
) -> None:
    payload = skops.io.dumps(SkopsBomb(marker))
    # without the key the manifest cannot follow the new file
    unsigned = make_artifact(tmp_path / "a", signing_key=release_key)
    (unsigned / MODEL_FILE).write_bytes(payload)
    _rewrite_manifest(unsigned, payload, None)
    _assert_refused(
        _predictor(unsigned, "--trusted_keys", str(trusted_keys)),
        "signature does not verify",
        marker,
    )
    # even signed (a careless or compromised signer), the type allow-list still holds
    signed = make_artifact(tmp_path / "b", signing_key=release_key)
    (signed / MODEL_FILE).write_bytes(payload)
    _rewrite_manifest(signed, payload, release_key)
    _assert_refused(
        _predictor(signed, "--trusted_keys", str(trusted_keys)),
        f"untrusted types in model file: {SkopsBomb.__module__}.SkopsBomb",
        marker,
    )


def test_manifest_signed_with_another_key_is_refused(
    tmp_path: Path, release_key: Ed25519PrivateKey, trusted_keys: Path, marker: Path
) -> None:
    artifact = make_artifact(tmp_path / "a", signing_key=release_key)
    payload = pickle.dumps(PickleBomb(marker))
    (artifact / PICKLE_MODEL_FILE).write_bytes(payload)
    attacker = Ed25519PrivateKey.generate()
    _rewrite_manifest(artifact, payload, attacker, model_file=PICKLE_MODEL_FILE, format="joblib")
    result = _predictor(artifact, "--trusted_keys", str(trusted_keys), "--allow_pickle")
    _assert_refused(result, "signature does not verify with any of the 1 trusted key", marker)
    # the signature file removed altogether: unsigned
    (artifact / SIGNATURE_FILE).unlink()
    result = _predictor(artifact, "--trusted_keys", str(trusted_keys), "--allow_pickle")
    _assert_refused(result, "signature file is missing", marker)


def test_pinned_digest_refuses_another_signed_model(
    tmp_path: Path, release_key: Ed25519PrivateKey, trusted_keys: Path, marker: Path
) -> None:
    """The gate pins version A's digest; the folder holds B (signed too, but not A)."""
    wanted = make_artifact(tmp_path / "a", signing_key=release_key)
    served = make_artifact(tmp_path / "b", classifier="forest", signing_key=release_key)
    digest = "sha256:" + hashlib.sha256((wanted / MODEL_FILE).read_bytes()).hexdigest()
    result = _predictor(served, "--trusted_keys", str(trusted_keys), "--model_digest", digest)
    _assert_refused(result, "digest mismatch: pinned", marker)
    # and the pinned one, with the same keys, serves
    with run_predictor(
        wanted, tmp_path, "--trusted_keys", str(trusted_keys), "--model_digest", digest
    ) as predictor:
        answer = httpx.post(
            f"{predictor.url}/v1/models/iris:predict",
            json={"instances": [[5.1, 3.5, 1.4, 0.2]]},
            timeout=10,
        ).json()
        assert answer["predictions"] == [0]
    assert "signature verified" in predictor.output()


def test_no_usable_trusted_keys_is_refused(tmp_path: Path, marker: Path) -> None:
    artifact = make_artifact(tmp_path / "a", signing_key=Ed25519PrivateKey.generate())
    empty = tmp_path / "empty.pub"
    empty.write_text("# no keys yet\n")
    _assert_refused(_predictor(artifact, "--trusted_keys", str(empty)), "no public keys", marker)


def test_busy_port_has_its_own_exit_code(
    tmp_path: Path, release_key: Ed25519PrivateKey, trusted_keys: Path
) -> None:
    artifact = make_artifact(tmp_path / "a", signing_key=release_key)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for flag in ("--http_port", "--grpc_port"):
            # the busy port comes last: it overrides the free one _predictor gives that flag
            result = _predictor(artifact, "--trusted_keys", str(trusted_keys), flag, str(port))
            assert result.returncode == EXIT_PORT_BUSY, result.stderr[-3000:]
            lines = [
                line
                for line in result.stderr.splitlines()
                if line.startswith("predictor: cannot serve: ")
            ]
            protocol = "REST" if flag == "--http_port" else "gRPC"
            assert lines == [
                f"predictor: cannot serve: cannot bind {protocol} to 127.0.0.1:{port}: "
                "Address already in use (is another server running?)"
            ], result.stderr[-3000:]
            assert "serving iris on" not in result.stderr
