"""Read locust's CSV statistics and judge them against SLOs (pure, no locust import)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Stats:
    name: str
    requests: int
    failures: int
    median_ms: float
    p99_ms: float
    rps: float

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class SloResult:
    passed: bool
    breaches: list[str]


def read_stats(stats_csv: Path) -> list[Stats]:
    """Rows of ``<prefix>_stats.csv``, the ``Aggregated`` row last."""
    with stats_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [
        Stats(
            name=row["Name"],
            requests=int(row["Request Count"]),
            failures=int(row["Failure Count"]),
            median_ms=_number(row["Median Response Time"]),
            p99_ms=_number(row["99%"]),
            rps=_number(row["Requests/s"]),
        )
        for row in rows
    ]


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # locust writes "N/A" for empty columns
        return 0.0


def judge(total: Stats, max_p99_ms: float | None, max_error_rate: float | None) -> SloResult:
    breaches = []
    if total.requests == 0:
        breaches.append("no requests completed")
    if max_p99_ms is not None and total.p99_ms > max_p99_ms:
        breaches.append(f"p99 {total.p99_ms:.0f} ms > {max_p99_ms:.0f} ms")
    if max_error_rate is not None and total.error_rate > max_error_rate:
        breaches.append(f"error rate {total.error_rate:.4f} > {max_error_rate:.4f}")
    return SloResult(not breaches, breaches)
