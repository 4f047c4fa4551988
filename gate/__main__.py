"""``python -m gate``: the gate service (settings from GATE_* environment variables)."""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
from collections.abc import Sequence
from types import FrameType

import uvicorn

from gate.settings import GateSettings, SettingsProblem, env_name, load_settings


def _stopped(signum: int, frame: FrameType | None) -> None:
    """uvicorn drains on SIGTERM, then re-raises the signal with the handler it found:
    this one, so a clean shutdown exits 0 (not -15)."""
    raise SystemExit(0)


class _Server(uvicorn.Server):
    """uvicorn's server, telling the app as soon as a shutdown begins: open event streams
    (``/v1/rollouts/{id}/stream``) then end at their next poll, instead of holding the
    graceful shutdown for its whole timeout."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        app = self.config.app
        if hasattr(app, "state"):
            app.state.stopping = True
        super().handle_exit(sig, frame)


def _first_sentence(text: str) -> str:
    flat = " ".join(text.split())
    return re.split(r"(?<=[.:;])\s", flat, maxsplit=1)[0].rstrip(".:;")


def build_parser() -> argparse.ArgumentParser:
    """No flags: the gate is configured by GATE_* variables (the same in a container as
    here), listed in the help so ``--help`` answers without any of them set."""
    lines = []
    for name, field in GateSettings.model_fields.items():
        required = " (required)" if field.is_required() else ""
        lines.append(
            f"  {env_name(name)}{required}\n      {_first_sentence(field.description or '')}"
        )
    return argparse.ArgumentParser(
        prog="python -m gate",
        description="The gate service: accuracy gate and progressive canary analysis, "
        "serving its API until SIGTERM or Ctrl-C. Settings come from the environment.",
        epilog="environment:\n" + "\n".join(lines),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def main(argv: Sequence[str] | None = None) -> int:
    build_parser().parse_args(argv)  # --help exits here, before any setting is read
    try:
        settings = load_settings()  # api_token comes from the environment
    except SettingsProblem as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from gate.app import create_app

    try:
        app = create_app(settings)
    except ValueError as exc:
        print(f"gate: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stopped)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep the logging set up above
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    _Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
