"""The gate reads held-out sets from an S3 API: a real one on loopback (moto's server,
credentials checked), never a mocked client. Bounded in size and time, off the event loop,
and every failure one clear line."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gate.object_store import ObjectStoreError, S3Config, fetch_object, read_object
from gate.replay import HoldoutSource, ReplayError, load_holdout, read_holdout
from tests.gate_fakes import write_holdout
from tests.s3_server import S3Server, s3_server

pytestmark = pytest.mark.integration

BUCKET = "mlpipeline"
HOLDOUT_KEY = "v2/artifacts/irisgate-train-evaluate-deploy/run-1/preprocess/7/test_data"
LIMIT = 1024


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("moto")) as server:
        client = server.client()
        client.create_bucket(Bucket=BUCKET)
        holdout = write_holdout(tmp_path_factory.mktemp("holdout")) / "holdout.csv"
        client.put_object(Bucket=BUCKET, Key=HOLDOUT_KEY, Body=holdout.read_bytes())
        client.put_object(Bucket=BUCKET, Key="big.csv", Body=b"x" * (LIMIT + 1))
        yield server


@pytest.fixture
def config(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Config:
    """The gate's environment: the standard AWS variables, and no file that could add
    credentials from this machine."""
    for name, value in s3.credentials.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return S3Config(endpoint_url=s3.url, timeout_s=5)


def uri(key: str, bucket: str = BUCKET) -> str:
    return f"s3://{bucket}/{key}"


def test_a_holdout_is_read_and_replayable(config: S3Config) -> None:
    source = HoldoutSource(max_bytes=LIMIT * 64, s3=config)
    text = asyncio.run(_load(uri(HOLDOUT_KEY), source))
    features, labels = read_holdout(text)
    assert len(features) == len(labels) == 6


async def _load(location: str, source: HoldoutSource) -> str:
    async with httpx.AsyncClient() as client:
        return await load_holdout(location, client, source)


def test_an_object_over_the_limit_is_refused_naming_the_setting(config: S3Config) -> None:
    with pytest.raises(ObjectStoreError) as caught:
        read_object(uri("big.csv"), config, LIMIT)
    assert str(caught.value) == (
        f"s3://{BUCKET}/big.csv is {LIMIT + 1} bytes, over the limit of {LIMIT} bytes "
        "(GATE_HOLDOUT_MAX_BYTES)"
    )
    assert read_object(uri("big.csv"), config, LIMIT + 1) == b"x" * (LIMIT + 1)
    with pytest.raises(ReplayError, match="over the limit of 1024 bytes"):
        asyncio.run(_load(uri("big.csv"), HoldoutSource(max_bytes=LIMIT, s3=config)))


@pytest.mark.parametrize(
    ("location", "code"),
    [(uri("missing/test_data"), "NoSuchKey"), (uri("x", bucket="no-such-bucket"), "NoSuchBucket")],
)
def test_a_missing_object_or_bucket_is_not_found(
    config: S3Config, location: str, code: str
) -> None:
    with pytest.raises(ObjectStoreError) as caught:
        read_object(location, config, LIMIT)
    assert str(caught.value) == f"{location} not found at {config.endpoint_url} ({code})"


@pytest.mark.parametrize(
    ("variable", "value", "code"),
    [
        ("AWS_ACCESS_KEY_ID", "AKIAUNKNOWN000000000", "InvalidAccessKeyId"),
        ("AWS_SECRET_ACCESS_KEY", "not-the-secret", "SignatureDoesNotMatch"),
    ],
)
def test_bad_credentials_are_access_denied_and_never_echoed(
    config: S3Config, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, code: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ObjectStoreError) as caught:
        read_object(uri(HOLDOUT_KEY), config, LIMIT * 64)
    message = str(caught.value)
    assert message.startswith(f"{uri(HOLDOUT_KEY)}: access denied at {config.endpoint_url}")
    assert f"({code})" in message and "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY" in message
    assert value not in message


def test_no_credentials_at_all_says_so(config: S3Config, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    with pytest.raises(ObjectStoreError, match="no S3 credentials: set AWS_ACCESS_KEY_ID"):
        read_object(uri(HOLDOUT_KEY), config, LIMIT)


@pytest.mark.parametrize(
    "location",
    ["s3://Bad_Bucket/x", "s3://mlpipeline/", "s3://mlpipeline/x?versionId=1", "s3:///x"],
)
def test_a_malformed_location_is_refused_before_any_request(
    config: S3Config, location: str
) -> None:
    with pytest.raises(ObjectStoreError, match=r"s3://"):
        read_object(location, S3Config(endpoint_url="http://127.0.0.1:9"), LIMIT)


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers: a hung S3 endpoint."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for connection in accepted:
            connection.close()
        listener.close()
    assert not thread.is_alive()


def test_a_hung_endpoint_times_out_without_blocking_the_event_loop(
    config: S3Config, silent_server: str
) -> None:
    hung = S3Config(endpoint_url=silent_server, timeout_s=0.3)

    async def read_while_ticking() -> tuple[int, float, str]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        started = time.monotonic()
        try:
            await fetch_object(uri(HOLDOUT_KEY), hung, LIMIT)
        except ObjectStoreError as exc:
            error = str(exc)
        else:
            error = ""
        ticker.cancel()
        return ticks, time.monotonic() - started, error

    ticks, seconds, error = asyncio.run(read_while_ticking())
    assert error.startswith(f"{uri(HOLDOUT_KEY)}: cannot read from {silent_server}: ")
    assert "timeout" in error.lower()
    assert 0.3 <= seconds < 5  # two attempts of 0.3 s, plus the retry's backoff
    assert ticks >= seconds / 0.01 / 3  # the loop kept running meanwhile


def test_without_boto3_the_error_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 -> ImportError
    with pytest.raises(ObjectStoreError) as caught:
        read_object(uri(HOLDOUT_KEY), S3Config(), LIMIT)
    assert "pip install 'irisgate[s3]'" in str(caught.value)
