"""Recorded demo runs (tests/data/demo/<scenario>/): what a real `python -m demo` wrote,
its machine paths replaced with the default run folder's. The report's tests render
them, so the page and the terminal summary are checked on real evidence with no run.

Each folder holds the gate's rollout record (``gate-rollout.json``), the router's final
routes (``routes.json``), the two pipeline results (``pipeline.json``), the label
poster's counters (``labels.json``) and locust's ``load_stats.csv`` and
``load_stats_history.csv``. Re-record after a change to what the gate records: copy those
files from a demo's run folder (``routes.json`` and ``pipeline.json`` are
``final_split`` and ``pipeline`` of its ``report.json``)."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from demo.report import build_report

RECORDED = Path(__file__).resolve().parent / "data" / "demo"


def recorded_report(scenario: str) -> dict[str, Any]:
    folder = RECORDED / scenario
    return build_report(
        scenario,
        json.loads((folder / "pipeline.json").read_text()),
        json.loads((folder / "gate-rollout.json").read_text()),
        json.loads((folder / "routes.json").read_text()),
        folder / "load_stats.csv",
        folder / "labels.json",
        folder / "load_stats_history.csv",
    )


class _Tables(HTMLParser):
    """Each ``<h2>``'s tables as rows of cell texts, and every image's ``src``."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[list[str]]]] = {}
        self.images: list[tuple[str, str]] = []
        self._heading = ""
        self._in_heading = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "h2":
            self._in_heading, self._heading = True, ""
        elif tag == "table":
            self.tables.setdefault(self._heading, []).append([])
        elif tag == "tr":
            self.tables[self._heading][-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            found = dict(attrs)
            self.images.append((found.get("alt") or "", found.get("src") or ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self._in_heading = False
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[self._heading][-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._in_heading:
            self._heading += data
        elif self._cell is not None:
            self._cell.append(data)


def page_tables(html: str) -> dict[str, list[list[list[str]]]]:
    """``{heading: [table: [row: [cell text]]]}`` of a rendered report."""
    parser = _Tables()
    parser.feed(html)
    return parser.tables


def page_images(html: str) -> list[tuple[str, str]]:
    """``(alt, src)`` of every image on the page."""
    parser = _Tables()
    parser.feed(html)
    return parser.images
