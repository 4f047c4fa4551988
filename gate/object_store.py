"""One object read from an S3 API (AWS S3, MinIO, ...): the held-out set a pipeline on a
cluster leaves in KFP's artifact store, which the gate replays against the candidate.

Its own module because the client is heavy and blocking: boto3 is an optional extra
(``irisgate[s3]``, which the gate's image installs), imported only when an ``s3://``
location is read, and every call runs in a worker thread so the gate's event loop keeps
ticking rollouts meanwhile. Each read is bounded three ways: a connect and read timeout per
request (two attempts at most), a size limit checked against the object's declared length
before its body is read and again while reading it, and the location itself, which
:mod:`gate.confine` has held to the operator's prefixes before anything is fetched.

Credentials come the standard AWS way (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a
profile, a role), never from a rollout's body; an error never repeats them.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

S3_EXTRA = "irisgate[s3]"
SCHEME = "s3"
# S3's bucket naming rules (which MinIO follows): 3-63 of a-z 0-9 . -, a letter or digit at
# each end.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_MAX_KEY_BYTES = 1024
_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_DENIED = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "403",
    "Forbidden",
}


class ObjectStoreError(Exception):
    """The object could not be read; one line naming the location and why."""


@dataclass(frozen=True)
class S3Config:
    """How to reach the S3 API (``GATE_S3_*``); credentials are not here on purpose."""

    endpoint_url: str = ""
    """Empty: AWS's own endpoint for the region."""
    region: str = "us-east-1"
    timeout_s: float = 10.0


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        """``s3://BUCKET/KEY``, nothing else: no query, fragment, user or port."""
        parts = urlsplit(uri)
        if parts.scheme.lower() != SCHEME or parts.query or parts.fragment:
            raise ObjectStoreError(f"{uri}: expected s3://BUCKET/KEY")
        if not _BUCKET.fullmatch(parts.netloc):
            raise ObjectStoreError(f"{uri}: {parts.netloc!r} is not an S3 bucket name")
        key = parts.path.removeprefix("/")
        if not key or key.endswith("/") or len(key.encode()) > _MAX_KEY_BYTES:
            raise ObjectStoreError(f"{uri}: expected the key of one object after the bucket")
        return cls(parts.netloc, key)


def is_s3(location: str) -> bool:
    return location[:5].lower() == f"{SCHEME}://"


def _client(config: S3Config) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise ObjectStoreError(
            f"reading s3:// needs boto3, which is not installed: pip install '{S3_EXTRA}' "
            "(the gate's image has it)"
        ) from exc
    settings = Config(
        connect_timeout=config.timeout_s,
        read_timeout=config.timeout_s,
        retries={"max_attempts": 2, "mode": "standard"},
        # MinIO and most S3 servers other than AWS want the bucket in the path
        s3={"addressing_style": "path" if config.endpoint_url else "auto"},
        signature_version="s3v4",
    )
    # a session of its own: boto3's default session is not safe to share between threads
    return boto3.session.Session().client(
        "s3",
        endpoint_url=config.endpoint_url or None,
        region_name=config.region,
        config=settings,
    )


def read_object(uri: str, config: S3Config, max_bytes: int) -> bytes:
    """The object's bytes, at most ``max_bytes``; blocking (see :func:`fetch_object`)."""
    where = S3Location.parse(uri)
    client = _client(config)
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    endpoint = config.endpoint_url or f"AWS S3 ({config.region})"
    try:
        response = client.get_object(Bucket=where.bucket, Key=where.key)
        body = response["Body"]
        try:
            declared = int(response.get("ContentLength") or 0)
            if declared > max_bytes:
                raise ObjectStoreError(too_large(uri, f"{declared} bytes", max_bytes))
            data: bytes = body.read(max_bytes + 1)
        finally:
            body.close()
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        if code in _NOT_FOUND or status == "404":
            raise ObjectStoreError(f"{uri} not found at {endpoint} ({code or status})") from exc
        if code in _DENIED or status == "403":
            raise ObjectStoreError(
                f"{uri}: access denied at {endpoint} ({code or status}): check the gate's S3 "
                "credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) and their permission "
                "to read the bucket"
            ) from exc
        raise ObjectStoreError(f"{uri}: S3 at {endpoint} answered {code or status}") from exc
    except NoCredentialsError as exc:
        raise ObjectStoreError(
            f"{uri}: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or a profile or role) for the gate"
        ) from exc
    except BotoCoreError as exc:  # unreachable endpoint, timeouts, a broken answer
        raise ObjectStoreError(f"{uri}: cannot read from {endpoint}: {exc}") from exc
    if len(data) > max_bytes:  # the object grew after its length was declared
        raise ObjectStoreError(too_large(uri, "more than that", max_bytes))
    return data


async def fetch_object(uri: str, config: S3Config, max_bytes: int) -> bytes:
    """:func:`read_object` in a worker thread: the event loop never waits on S3."""
    return await asyncio.to_thread(read_object, uri, config, max_bytes)


def too_large(uri: str, size: str, max_bytes: int) -> str:
    """The one wording of an over-limit held-out set, wherever it is read from."""
    return f"{uri} is {size}, over the limit of {max_bytes} bytes (GATE_HOLDOUT_MAX_BYTES)"
