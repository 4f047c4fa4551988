"""Background work the controller runs per rollout (generated traffic, shadow replays):
at most one task per rollout and kind, started and stopped with the phase that wants it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

logger = logging.getLogger(__name__)


class Runner(Protocol):
    async def run(self) -> None: ...

    def summary(self) -> str:
        """One line for the log when it stops."""
        ...


class RolloutTasks:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._tasks: dict[str, tuple[asyncio.Task[None], Runner]] = {}

    def running(self, rollout_id: str) -> bool:
        entry = self._tasks.get(rollout_id)
        return entry is not None and not entry[0].done()

    def start(self, rollout_id: str, runner: Runner, description: str) -> None:
        task = asyncio.create_task(runner.run(), name=f"{self.kind}-{rollout_id}")
        self._tasks[rollout_id] = (task, runner)
        logger.info("rollout %s: %s started: %s", rollout_id, self.kind, description)

    async def stop(self, rollout_id: str) -> None:
        entry = self._tasks.pop(rollout_id, None)
        if entry is None:
            return
        task, runner = entry
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        logger.info("rollout %s: %s stopped (%s)", rollout_id, self.kind, runner.summary())

    async def stop_all(self) -> None:
        for rollout_id in list(self._tasks):
            await self.stop(rollout_id)
