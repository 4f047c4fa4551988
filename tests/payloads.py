"""Payloads an attacker would ship in a model file: each touches a marker file when it is
deserialized, which proves attacker code ran. The trust tests assert the marker never
appears."""

from __future__ import annotations

import pathlib
from pathlib import Path
from typing import Any


class PickleBomb:
    """Unpickling this touches the marker file: proof that attacker code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[pathlib.Path]]:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


class SkopsBomb:
    """A type nobody reviewed: building it (``__setstate__``) touches the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __getstate__(self) -> dict[str, Any]:
        return {"marker": self.marker}

    def __setstate__(self, state: dict[str, Any]) -> None:
        pathlib.Path(state["marker"]).touch()
        self.__dict__.update(state)
