"""SLO judgement over locust's CSV statistics."""

from __future__ import annotations

from pathlib import Path

from load_tests.slo import Stats, judge, read_stats

HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
    "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,"
    "50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
)


def test_read_stats(tmp_path: Path) -> None:
    path = tmp_path / "x_stats.csv"
    path.write_text(
        HEADER + "\nPOST,/v1,100,2,5,6,1,40,20,50.5,1,5,6,7,8,9,10,12,30,40,40,40\n"
        ",Aggregated,100,2,5,6,1,40,20,50.5,1,5,6,7,8,9,10,12,30,40,40,40\n"
    )
    rows = read_stats(path)
    assert [r.name for r in rows] == ["/v1", "Aggregated"]
    assert (rows[-1].requests, rows[-1].p99_ms, rows[-1].error_rate) == (100, 30.0, 0.02)


def test_judge_both_ways() -> None:
    total = Stats("Aggregated", requests=100, failures=2, median_ms=5, p99_ms=30, rps=50)
    assert judge(total, 50, 0.05).passed
    assert judge(total, None, None).passed
    breached = judge(total, 20, 0.01)
    assert not breached.passed
    assert breached.breaches == ["p99 30 ms > 20 ms", "error rate 0.0200 > 0.0100"]
    assert judge(Stats("Aggregated", 0, 0, 0, 0, 0), None, None).breaches == [
        "no requests completed"
    ]
