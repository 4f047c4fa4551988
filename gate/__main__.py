"""``python -m gate``: the gate service (settings from GATE_* environment variables)."""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

import uvicorn
from pydantic import ValidationError

from gate.settings import GateSettings


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


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = GateSettings()  # api_token comes from the environment
    except ValidationError as exc:
        error = exc.errors()[0]
        print(
            f"gate: invalid setting GATE_{str(error['loc'][0]).upper()}: {error['msg']}",
            file=sys.stderr,
        )
        return 2
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
