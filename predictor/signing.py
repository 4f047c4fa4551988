"""Ed25519 keys and detached signatures for artifact manifests (``model.json``).

Formats (documented in the README, "Trust model"):

- signature: ``model.json.sig`` holds the base64 of the raw 64-byte Ed25519 signature over
  the exact bytes of ``model.json``, followed by a newline;
- public keys (``PREDICTOR_TRUSTED_KEYS`` / ``--trusted_keys``): a text file with one key
  per line, the base64 of the raw 32-byte public key, optionally followed by a space and
  a name (``<base64> release-2026``); blank lines and lines starting with ``#`` are
  ignored. Several lines = several trusted keys, which is how keys are rotated;
- signing key (``IRISGATE_SIGNING_KEY``): a path to an unencrypted PKCS#8 PEM private key.

With no signing key configured, writers use a development key pair created on first use
in ``.irisgate/keys/`` under the working directory (``dev.key``, mode 0600, and
``dev.pub`` in the public key format above); the predictor trusts ``dev.pub`` when no
trusted keys are configured and the file exists. It is a convenience for the local demo
and tests, never a production trust root.

This module must stay importable without kserve: the pipeline signs with it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNING_KEY_ENV = "IRISGATE_SIGNING_KEY"
DEV_KEY_DIR = Path(".irisgate/keys")
DEV_PRIVATE_KEY = "dev.key"
DEV_PUBLIC_KEY = "dev.pub"
SIGNATURE_SUFFIX = ".sig"
_SIGNATURE_BYTES = 64
_PUBLIC_KEY_BYTES = 32


class SigningError(Exception):
    """A key or signature that cannot be used; ``str()`` is one line naming the file."""


@dataclass(frozen=True)
class TrustedKey:
    """A public key the predictor accepts signatures from, with a name for log lines."""

    name: str
    key: Ed25519PublicKey


def public_key_line(key: Ed25519PublicKey, name: str = "") -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    text = base64.b64encode(raw).decode()
    return f"{text} {name}".rstrip() + "\n"


def key_id(key: Ed25519PublicKey) -> str:
    """Short, stable identifier: the first 12 characters of the base64 public key."""
    return public_key_line(key)[:12]


def read_trusted_keys(path: Path | str) -> list[TrustedKey]:
    """Parse a public key file (format above); refuses a file with no keys."""
    source = Path(path)
    try:
        text = source.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SigningError(f"{source}: cannot read trusted keys ({exc})") from exc
    keys: list[TrustedKey] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        encoded, _, name = stripped.partition(" ")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != _PUBLIC_KEY_BYTES:
            raise SigningError(
                f"{source}: line {number}: not a base64 raw 32-byte Ed25519 public key"
            )
        key = Ed25519PublicKey.from_public_bytes(raw)
        keys.append(TrustedKey(name.strip() or key_id(key), key))
    if not keys:
        raise SigningError(f"{source}: no public keys in the file")
    return keys


def read_signing_key(path: Path | str) -> Ed25519PrivateKey:
    source = Path(path)
    try:
        key = serialization.load_pem_private_key(source.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SigningError(f"{source}: cannot read signing key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{source}: signing key is not an Ed25519 private key")
    return key


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def dev_key_pair(directory: Path | str = DEV_KEY_DIR) -> Ed25519PrivateKey:
    """The development key, created on first use (private key mode 0600). Safe against a
    concurrent first use: the key file appears atomically and the first writer wins."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    private_path = folder / DEV_PRIVATE_KEY
    if not private_path.exists():
        fd, temporary = tempfile.mkstemp(prefix=".dev-", dir=folder)  # mode 0600
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(private_key_pem(Ed25519PrivateKey.generate()))
            with contextlib.suppress(FileExistsError):
                os.link(temporary, private_path)  # fails if another writer won the race
        finally:
            os.unlink(temporary)
    key = read_signing_key(private_path)
    public_path = folder / DEV_PUBLIC_KEY
    line = public_key_line(key.public_key(), "irisgate-dev")
    if not public_path.exists() or public_path.read_text() != line:
        _write_atomically(public_path, line.encode())
    return key


def _write_atomically(path: Path, data: bytes) -> None:
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def default_signing_key() -> Ed25519PrivateKey:
    """``IRISGATE_SIGNING_KEY`` when set, else the development key pair."""
    configured = os.environ.get(SIGNING_KEY_ENV)
    if configured:
        return read_signing_key(configured)
    return dev_key_pair()


def default_trusted_keys() -> list[TrustedKey]:
    """What a writer verifies its own artifacts with: the public half of its signing key."""
    key = default_signing_key().public_key()
    return [TrustedKey(key_id(key), key)]


def dev_public_key_path() -> Path:
    return DEV_KEY_DIR / DEV_PUBLIC_KEY


def sign(data: bytes, key: Ed25519PrivateKey) -> bytes:
    """The signature file's content for ``data``."""
    return base64.b64encode(key.sign(data)) + b"\n"


def verify(data: bytes, signature_file: bytes, keys: Sequence[TrustedKey]) -> TrustedKey:
    """The trusted key that signed ``data``; raises SigningError with the reason otherwise."""
    if not keys:
        raise SigningError("no trusted public keys are configured")
    try:
        signature = base64.b64decode(signature_file.strip(), validate=True)
    except (binascii.Error, ValueError):
        signature = b""
    if len(signature) != _SIGNATURE_BYTES:
        raise SigningError("signature is not a base64 64-byte Ed25519 signature")
    for trusted in keys:
        try:
            trusted.key.verify(signature, data)
        except InvalidSignature:
            continue
        return trusted
    raise SigningError(
        f"signature does not verify with any of the {len(keys)} trusted key(s) "
        "(the manifest was modified, or signed by an untrusted key)"
    )
