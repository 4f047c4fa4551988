"""Run a command under a pseudo-terminal, as a person at a real terminal would see it.

A pipe hides what only a terminal triggers: rich's live views draw (and, by default, take
stdout over) only when they see a tty. The KFP executor's JSON once flooded the screen
that way while every test, reading a pipe, saw the compact output.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pexpect

# CSI sequences (colours, cursor moves, erase line) and OSC ones (titles, links)
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[=>]")
# what a run's environment may hold that changes how rich sees the terminal
_TERMINAL_VARIABLES = ("COLUMNS", "LINES", "FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "CI")


@dataclass(frozen=True)
class Screen:
    code: int
    raw: str  # what the terminal received, escapes included

    @property
    def text(self) -> str:
        """The output without escapes, line ends as ``\\n``."""
        return _ESCAPES.sub("", self.raw).replace("\r\n", "\n")

    @property
    def lines(self) -> list[str]:
        """The lines that scrolled past: a live display redraws its line in place
        (carriage return, erase) and adds a line only when it prints one."""
        return [line.rsplit("\r", 1)[-1] for line in self.text.split("\n")]


def run_in_terminal(
    command: list[str],
    cwd: Path,
    *,
    env: dict[str, str | None] | None = None,
    columns: int = 80,
    timeout: float = 300,
) -> Screen:
    """``command`` on a pty of ``columns`` x 24 until it exits; its whole output is read
    as it comes (a full pty buffer would block the command). ``env`` adds to this
    process's environment; a None value removes the variable."""
    environment = {
        name: value for name, value in os.environ.items() if name not in _TERMINAL_VARIABLES
    }
    environment["TERM"] = "xterm-256color"
    for name, value in (env or {}).items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    child = pexpect.spawn(
        command[0],
        command[1:],
        cwd=str(cwd),
        env=environment,
        dimensions=(24, columns),
        encoding="utf-8",
        codec_errors="replace",
        timeout=timeout,
    )
    try:
        child.expect(pexpect.EOF)
        raw = child.before or ""
    finally:
        child.close(force=True)
    code = child.exitstatus if child.exitstatus is not None else -(child.signalstatus or 0)
    return Screen(code, raw)
