"""The locust command line, built in one place for the headless runner and the demo."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def headless_command(
    user_classes: Sequence[str],
    *,
    users: int,
    spawn_rate: float,
    host: str,
    report_prefix: Path,
    options: Sequence[str] = (),
) -> list[str]:
    """locust without its UI, writing ``<prefix>_*.csv`` and ``<prefix>.html``; failures do
    not set its exit code, the caller's SLO checks decide."""
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        *user_classes,
        "--headless",
        "--users",
        str(users),
        "--spawn-rate",
        str(spawn_rate),
        "--host",
        host,
        "--csv",
        str(report_prefix),
        "--html",
        str(report_prefix.with_suffix(".html")),
        "--only-summary",
        "--exit-code-on-error",
        "0",
        *options,
    ]
