"""Reading a held-out set: a path, an http(s) URL or an s3:// object (tests/integration/
test_object_store.py, against a real S3 server), each bounded by GATE_HOLDOUT_MAX_BYTES
and read as UTF-8; anything else is one clear error."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gate.object_store import S3Config
from gate.replay import HoldoutSource, ReplayError, load_holdout
from gate.settings import GateSettings

CSV = b"sepal_length,sepal_width,petal_length,petal_width,species\n5.1,3.5,1.4,0.2,0\n"


def load(location: str, source: HoldoutSource, transport: httpx.MockTransport | None = None) -> str:
    async def run() -> str:
        async with httpx.AsyncClient(transport=transport) as client:
            return await load_holdout(location, client, source)

    return asyncio.run(run())


def test_the_source_comes_from_the_settings() -> None:
    settings = GateSettings(
        api_token="test-token-0123456789",
        holdout_max_bytes=4096,
        s3_endpoint_url="http://minio-service.kubeflow:9000",
        s3_timeout_s=3,
    )
    assert HoldoutSource.from_settings(settings) == HoldoutSource(
        4096, S3Config("http://minio-service.kubeflow:9000", "us-east-1", 3.0)
    )


def test_a_file_over_the_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "holdout.csv"
    path.write_bytes(CSV * 40)
    assert load(str(path), HoldoutSource(max_bytes=len(CSV) * 40)) == (CSV * 40).decode()
    with pytest.raises(ReplayError) as caught:
        load(str(path), HoldoutSource(max_bytes=len(CSV) * 40 - 1))
    assert str(caught.value) == (
        f"held-out set {path} is {len(CSV) * 40} bytes, over the limit of "
        f"{len(CSV) * 40 - 1} bytes (GATE_HOLDOUT_MAX_BYTES)"
    )


async def chunks(count: int) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield CSV


@pytest.mark.parametrize("declared", [True, False])
def test_an_http_body_over_the_limit_is_refused_declared_or_streamed(declared: bool) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if declared:
            return httpx.Response(200, content=CSV * 40)
        return httpx.Response(200, content=chunks(40))  # chunked: no length up front

    transport = httpx.MockTransport(handler)
    url = "http://data.example/holdout.csv"
    assert load(url, HoldoutSource(max_bytes=len(CSV) * 40), transport).count("\n") == 80
    size = f"{len(CSV) * 40} bytes" if declared else "more than that"
    with pytest.raises(ReplayError, match=re.escape(f"{url} is {size}, over the limit of 1000")):
        load(url, HoldoutSource(max_bytes=1000), transport)


def test_an_http_error_names_the_location() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(404))
    with pytest.raises(ReplayError, match=re.escape("held-out set http://data.example/x")):
        load("http://data.example/x", HoldoutSource(), transport)


@pytest.mark.parametrize(
    ("location", "problem"),
    [
        ("ftp://data.example/holdout.csv", "unsupported scheme"),
        ("gs://bucket/holdout.csv", "unsupported scheme"),
        ("/nonexistent/holdout.csv", "not found"),
    ],
)
def test_anything_else_is_one_clear_error(location: str, problem: str) -> None:
    with pytest.raises(ReplayError) as caught:
        load(location, HoldoutSource())
    assert str(caught.value).startswith(f"held-out set {location}") and problem in str(caught.value)


def test_bytes_that_are_not_utf8_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "holdout.csv"
    path.write_bytes(b"\xff\xfe" + CSV)
    with pytest.raises(ReplayError, match="is not UTF-8 text"):
        load(str(path), HoldoutSource())
