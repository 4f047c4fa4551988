"""``--event_loop``: KServe's flag, honoured (stock KServe runs one process on asyncio's
loop whatever it says), and refused with its name when it asks for what is missing."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest
import uvloop
from pydantic import ValidationError

from predictor.server import loop_factory
from predictor.settings import PredictorSettings


def test_auto_and_uvloop_run_on_uvloop_and_asyncio_on_asyncios_loop() -> None:
    assert loop_factory("auto") is uvloop.new_event_loop
    assert loop_factory("uvloop") is uvloop.new_event_loop
    assert loop_factory("asyncio") is None
    with asyncio.Runner(loop_factory=loop_factory("auto")) as runner:
        assert isinstance(runner.get_loop(), uvloop.Loop)


def test_uvloop_asked_for_but_missing_is_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvloop" else real(name)
    )
    with pytest.raises(ValidationError, match="event_loop uvloop: uvloop is not installed"):
        PredictorSettings(event_loop="uvloop")
    assert PredictorSettings(event_loop="auto").event_loop == "auto"  # auto falls back


def test_an_unknown_event_loop_is_refused() -> None:
    with pytest.raises(ValidationError, match="event_loop"):
        PredictorSettings(event_loop="trio")
