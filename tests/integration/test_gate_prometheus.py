"""The prometheus metrics provider against a real Prometheus scraping real predictors."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gate.core.analysis import WindowMeasurement
from gate.providers.base import MetricsUnavailable, Targets
from gate.providers.prometheus import PrometheusProvider
from tests.gate_stack import build_registry
from tests.helpers import (
    Predictor,
    RunningProcess,
    free_port,
    run_predictor,
    start_command,
    wait_until,
)

pytestmark = pytest.mark.integration
ROW = {"instances": [[6.1, 2.8, 4.7, 1.2]]}


@pytest.fixture
def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is not installed; .ci/run installs Debian's package")
        pytest.skip("prometheus binary not installed (apt-get install prometheus)")
    return binary


def start_prometheus(
    binary: str,
    root: Path,
    targets: list[Predictor],
) -> tuple[str, RunningProcess]:
    port = free_port()
    config = root / "prometheus.yml"
    listed = ", ".join(f"'127.0.0.1:{t.http_port}'" for t in targets)
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: predictors\n    static_configs:\n"
        f"      - targets: [{listed}]\n"
    )
    process = start_command(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={root / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        root / "prometheus.log",
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(
        lambda: httpx.get(f"{url}/-/ready").status_code == 200,
        30,
        "prometheus",
        process.process,
        process.log,
    )
    return url, process


@pytest.fixture
def predictors(tmp_path: Path) -> Iterator[tuple[Predictor, Predictor]]:
    registry = build_registry(tmp_path)
    with (
        run_predictor(registry / "iris" / "1", tmp_path) as stable,
        run_predictor(
            registry / "iris" / "2",
            tmp_path,
            "--role",
            "canary",
            "--fault_error_rate",
            "0.5",
            "--fault_seed",
            "3",
        ) as canary,
    ):
        yield stable, canary


def scraped(url: str, promql: str, expected: float, timeout: float = 30) -> None:
    def check() -> bool:
        result = httpx.get(f"{url}/api/v1/query", params={"query": promql}).json()
        values = result["data"]["result"]
        return bool(values) and float(values[0]["value"][1]) >= expected

    wait_until(check, timeout, f"prometheus to see {promql} >= {expected}")


def test_prometheus_provider_measures_both_versions(
    prometheus_binary: str, predictors: tuple[Predictor, Predictor], tmp_path: Path
) -> None:
    stable, canary = predictors
    url, process = start_prometheus(prometheus_binary, tmp_path, [stable, canary])
    try:
        with httpx.Client() as client:
            for target in (stable, canary):  # make the series exist before the window
                client.post(f"{target.url}/v1/models/iris:predict", json=ROW)
            scraped(url, 'sum(irisgate_predictor_requests_total{version="2"})', 1)
            scraped(url, 'sum(irisgate_predictor_requests_total{version="1"})', 1)
            window_start = time.monotonic()
            for _ in range(40):
                client.post(f"{stable.url}/v1/models/iris:predict", json=ROW)
            for _ in range(60):
                client.post(f"{canary.url}/v1/models/iris:predict", json=ROW)
        scraped(url, 'sum(irisgate_predictor_requests_total{version="2"})', 61)
        scraped(url, 'sum(irisgate_predictor_requests_total{version="1"})', 41)
        time.sleep(1.5)  # one more scrape inside the window
        # increase() needs the last sample from before the traffic inside its range: pad
        # the window by two scrape intervals (the gate's windows are many intervals long)
        window_s = time.monotonic() - window_start + 2

        async def measure() -> WindowMeasurement:
            provider = PrometheusProvider(url)
            try:
                return await provider.measure(
                    Targets(model="iris", stable_version="1", canary_version="2"), None, window_s
                )
            finally:
                await provider.aclose()

        measured = asyncio.run(measure())
        # increase() extrapolates to the range's edges; over a window of a few scrape
        # intervals that adds up to half again (the gate's windows are much longer)
        assert 0.8 * 60 <= measured.canary.requests <= 1.6 * 60
        assert 0.8 * 40 <= measured.stable.requests <= 1.6 * 40
        assert 0.3 < measured.canary.error_rate < 0.7
        assert measured.stable.server_errors == 0
        assert measured.canary.p99_s is not None and measured.canary.p99_s < 1
        assert sum(measured.stable.class_counts.values()) > 0
    finally:
        process.stop()


def test_prometheus_down_is_metrics_unavailable() -> None:
    async def measure() -> None:
        provider = PrometheusProvider(f"http://127.0.0.1:{free_port()}")
        try:
            await provider.measure(Targets("iris", "1", "2"), None, 30)
        finally:
            await provider.aclose()

    with pytest.raises(MetricsUnavailable):
        asyncio.run(measure())
