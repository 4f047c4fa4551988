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
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep the logging set up above
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
