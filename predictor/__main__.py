"""``python -m predictor``: serve one verified artifact with kserve.ModelServer."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from predictor.artifact import ArtifactError
from predictor.processes import shared_metrics_dir
from predictor.settings import PredictorSettings

# Exit codes, one per class of failure (README, "Trust model"):
EXIT_BAD_SETTINGS = 2  # a flag or PREDICTOR_* value is invalid
EXIT_BAD_ARTIFACT = 3  # the artifact is refused: signature, keys, digest, types, versions
EXIT_PORT_BUSY = 4  # a REST or gRPC port cannot be bound


def _bool(text: str) -> bool:
    if text.lower() in {"1", "true", "yes", "on"}:
        return True
    if text.lower() in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _ports(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ports, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m predictor",
        description="Serve a verified scikit-learn artifact over KServe v1 REST, "
        "Open Inference Protocol v2 REST and gRPC. Every flag can also be set as "
        "PREDICTOR_<FLAG> in the environment; flags win.",
    )
    fields = PredictorSettings.model_fields

    def add(flag: str, *aliases: str, **kwargs: Any) -> None:
        field = fields.get(flag.lstrip("-"))
        if field is not None:
            kwargs["help"] = f"{field.description} (default: {field.default})"
        parser.add_argument(flag, *aliases, **kwargs)

    # KServe's own flag names are kept so KServe users' manifests keep working.
    add("--model_name")
    add("--model_dir")
    add("--trusted_keys")
    add("--model_digest")
    add("--allow_pickle", type=_bool, nargs="?", const=True)
    add("--http_port", type=int)
    add("--grpc_port", type=int)
    add("--grpc_process_ports", type=_ports, metavar="PORT,...")
    add("--enable_grpc", type=_bool)
    add("--workers")
    add("--event_loop", "--event-loop", choices=["auto", "asyncio", "uvloop"])
    add("--max_threads", type=int)
    add("--host")
    add("--role", choices=["stable", "canary"])
    add("--max_rows", type=int)
    add("--batch_max_rows", type=int)
    add("--batch_max_wait_ms", type=float)
    add("--fast_path", type=_bool)
    add("--fast_lane", type=_bool)
    add("--max_message_mb", type=int)
    add("--max_body_mb", type=float)
    add("--max_json_depth", type=int)
    add("--fault_error_rate", type=float)
    add("--fault_latency_ms", type=float)
    add("--fault_seed", type=int)
    add("--fault_start_delay_s", type=float)
    add("--access_log", type=_bool)
    add("--grace_period", type=int)
    add("--log_level")
    return parser


def load_settings(argv: Sequence[str]) -> PredictorSettings:
    args = build_parser().parse_args(argv)
    given = {key: value for key, value in vars(args).items() if value is not None}
    return PredictorSettings(**given)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        settings = load_settings(argv)
    except ValidationError as exc:
        error = exc.errors()[0]
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["loc"]:
            print(f"predictor: invalid setting {error['loc'][0]}: {message}", file=sys.stderr)
        else:  # a rule across settings (its message names them)
            print(f"predictor: invalid settings: {message}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    # kserve parses sys.argv when imported; hide our flags from it so it sees only defaults.
    sys.argv = sys.argv[:1]
    if settings.fault_start_delay_s:
        time.sleep(settings.fault_start_delay_s)  # fault injection: a slow start
    try:
        # Before prometheus_client is imported: several processes share metrics through files.
        with shared_metrics_dir(settings.process_count()):
            # imported late: kserve takes ~1.5 s to import
            from predictor.app import PortBusyError, serve

            try:
                serve(settings)
            except PortBusyError as exc:
                logging.getLogger("predictor").error("cannot serve: %s", exc)
                print(f"predictor: cannot serve: {exc}", file=sys.stderr)
                return EXIT_PORT_BUSY
    except ArtifactError as exc:
        logging.getLogger("predictor").error("refusing to start: %s", exc)
        print(f"predictor: refusing to start: {exc}", file=sys.stderr)
        return EXIT_BAD_ARTIFACT
    return 0


if __name__ == "__main__":
    sys.exit(main())
