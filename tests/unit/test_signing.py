"""Signatures over manifests, public key files, the development key, key rotation."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from predictor import signing
from predictor.artifact import SIGNATURE_FILE, ArtifactError, verify_artifact
from predictor.signing import SigningError, TrustedKey
from tests.helpers import make_artifact


def _trusted(*keys: Ed25519PrivateKey) -> list[TrustedKey]:
    return [TrustedKey(f"k{i}", k.public_key()) for i, k in enumerate(keys)]


def test_good_signature_names_its_key() -> None:
    key = Ed25519PrivateKey.generate()
    signature = signing.sign(b"manifest", key)
    assert signature.endswith(b"\n") and len(signature) == 89  # base64 of 64 bytes + newline
    assert signing.verify(b"manifest", signature, _trusted(key)).name == "k0"


def test_bad_or_missing_signature_is_refused() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    signature = signing.sign(b"manifest", key)
    with pytest.raises(SigningError, match="does not verify with any of the 1 trusted"):
        signing.verify(b"manifest!", signature, _trusted(key))
    with pytest.raises(SigningError, match="does not verify"):
        signing.verify(b"manifest", signature, _trusted(other))
    with pytest.raises(SigningError, match="not a base64 64-byte"):
        signing.verify(b"manifest", b"", _trusted(key))
    with pytest.raises(SigningError, match="no trusted public keys"):
        signing.verify(b"manifest", signature, [])


def test_key_rotation_two_trusted_keys(tmp_path: Path) -> None:
    """Rotation: trust old and new, re-sign (or retire) old artifacts, then drop the old."""
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    keys = tmp_path / "trusted.pub"
    keys.write_text(
        "# irisgate trusted keys\n\n"
        + signing.public_key_line(old.public_key(), "release-2026")
        + signing.public_key_line(new.public_key(), "release-2027")
    )
    both = signing.read_trusted_keys(keys)
    assert [k.name for k in both] == ["release-2026", "release-2027"]
    by_old = make_artifact(tmp_path / "old", signing_key=old)
    by_new = make_artifact(tmp_path / "new", signing_key=new)
    assert verify_artifact(by_old, trusted_keys=both)
    assert verify_artifact(by_new, trusted_keys=both)
    keys.write_text(signing.public_key_line(new.public_key(), "release-2027"))
    only_new = signing.read_trusted_keys(keys)
    assert verify_artifact(by_new, trusted_keys=only_new)
    with pytest.raises(ArtifactError, match=SIGNATURE_FILE):
        verify_artifact(by_old, trusted_keys=only_new)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "no public keys"),
        ("# only a comment\n", "no public keys"),
        ("not-base64!\n", "line 1: not a base64 raw 32-byte"),
        ("AAAA\n", "line 1: not a base64 raw 32-byte"),
    ],
)
def test_bad_key_files(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "keys.pub"
    path.write_text(text)
    with pytest.raises(SigningError, match=expected):
        signing.read_trusted_keys(path)
    with pytest.raises(SigningError, match="cannot read trusted keys"):
        signing.read_trusted_keys(tmp_path / "missing.pub")


def test_dev_key_pair_is_created_once_and_private(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    first = signing.dev_key_pair(folder)
    second = signing.dev_key_pair(folder)
    assert signing.private_key_pem(first) == signing.private_key_pem(second)
    assert stat.S_IMODE((folder / signing.DEV_PRIVATE_KEY).stat().st_mode) == 0o600
    public = signing.read_trusted_keys(folder / signing.DEV_PUBLIC_KEY)
    assert signing.verify(b"x", signing.sign(b"x", first), public).name == "irisgate-dev"


def test_signing_key_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "release.pem"
    path.write_bytes(signing.private_key_pem(key))
    monkeypatch.setenv(signing.SIGNING_KEY_ENV, str(path))
    directory = make_artifact(tmp_path / "a")
    assert verify_artifact(directory, trusted_keys=_trusted(key))
    path.write_text("garbage")
    with pytest.raises(SigningError, match="cannot read signing key"):
        signing.default_signing_key()


def test_signing_module_does_not_import_kserve() -> None:
    import subprocess
    import sys

    from tests.helpers import REPO_ROOT

    code = "import sys, predictor.signing; sys.exit(1 if 'kserve' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT).returncode == 0
