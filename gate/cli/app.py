"""``irisgate``: see and steer the gate's rollouts from a shell or a script.

Commands: ``rollouts list [--active]``, ``rollouts get ID [--watch]``, ``rollouts create``,
``rollouts pause|resume|promote [--full]|abort|approve ID``, ``feedback``. The gate's URL comes from
``--gate-url`` or ``IRISGATE_GATE_URL`` (default http://127.0.0.1:8090), the token from
``--token`` or ``GATE_API_TOKEN`` (sent, never printed). ``--output json`` prints the
API's JSON (``get --watch``: one line per state) instead of tables.

Exit codes, so a script can branch without parsing text:

- 0: done (``get --watch``: the rollout ended ``succeeded``)
- 1: the API refused the request (4xx; the status and the API's detail are shown)
- 2: usage error (a missing or malformed option)
- 3: the gate is unreachable, timed out, or failed (5xx): worth retrying
- 4: ``get --watch`` only: the rollout ended ``rolled_back``, ``failed`` or ``aborted``
- 130: interrupted (Ctrl-C)

Start-up cost matters (``irisgate --help`` in well under a second): only typer and rich
are imported at start, httpx when a command calls the gate, never the gate's server
modules.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

if TYPE_CHECKING:
    from gate.cli.client import GateClient

EXIT_CODES = """Exit codes: 0 ok (get --watch: the rollout succeeded); 1 the API refused
the request (4xx); 2 usage error; 3 gate unreachable, timed out or 5xx; 4 get --watch:
the rollout ended rolled_back, failed or aborted; 130 interrupted."""

DEFAULT_GATE_URL = "http://127.0.0.1:8090"
EXIT_WATCH_FAILED = 4
EXIT_INTERRUPTED = 130


class Output(StrEnum):
    HUMAN = "human"
    JSON = "json"


GateUrl = Annotated[
    str,
    typer.Option(
        "--gate-url", envvar="IRISGATE_GATE_URL", help="the gate's base URL", show_envvar=True
    ),
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="GATE_API_TOKEN",
        help="bearer token for commands that change something (never printed)",
        show_default=False,
        show_envvar=True,
    ),
]
OutputOption = Annotated[
    Output,
    typer.Option(
        "--output", "-o", help="human: tables; json: the API's JSON", case_sensitive=False
    ),
]
RolloutIdArg = Annotated[str, typer.Argument(help="rollout id, as `rollouts list` shows it")]

app = typer.Typer(
    name="irisgate",
    help="See and steer the gate's rollouts.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
rollouts = typer.Typer(
    help="List, inspect, watch, create and steer rollouts.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(rollouts, name="rollouts")


def _stdout() -> Console:
    return Console(highlight=False, soft_wrap=False)


def _stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)  # one line per error


def print_json(data: Any) -> None:
    """Plain JSON on stdout, not through rich (no wrapping, no markup)."""
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


@contextmanager
def gate_client(gate_url: str, token: str | None) -> Iterator[GateClient]:
    """A client whose errors end the command with their exit code, one line on stderr;
    Ctrl-C ends it with 130 (click would say "Aborted!" and exit 1). httpx is imported
    here, not at start: it is half the start-up time, and ``--help`` needs none of it."""
    from gate.cli.client import CLIError, GateClient

    try:
        with GateClient(gate_url, token) as client:
            yield client
    except CLIError as exc:
        _stderr().print(f"error: {exc}", markup=False)
        raise typer.Exit(exc.exit_code) from exc
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _show(output: Output, data: Any, human: Callable[[Any], Any]) -> None:
    if output is Output.JSON:
        print_json(data)
    else:
        _stdout().print(human(data), markup=False)  # a message may hold "[...]"


@rollouts.command("list")
def list_rollouts(
    active: Annotated[bool, typer.Option("--active", help="only rollouts in progress")] = False,
    gate_url: GateUrl = DEFAULT_GATE_URL,
    token: Token = None,
    output: OutputOption = Output.HUMAN,
) -> None:
    """List rollouts, oldest first."""
    from gate.cli.render import rollouts_table

    with gate_client(gate_url, token) as client:
        _show(output, client.list_rollouts(active), rollouts_table)


@rollouts.command("get")
def get_rollout(
    rollout_id: RolloutIdArg,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            "-w",
            help="follow the rollout live until it ends; exit 0 if it succeeded, 4 if not",
        ),
    ] = False,
    gate_url: GateUrl = DEFAULT_GATE_URL,
    token: Token = None,
    output: OutputOption = Output.HUMAN,
) -> None:
    """Show one rollout: phase, weight, step, message and the last decisions."""
    from gate.cli.render import rollout_view

    with gate_client(gate_url, token) as client:
        if not watch:
            _show(output, client.get_rollout(rollout_id), rollout_view)
            return
        last = _watch(client, rollout_id, output)
    if last.get("phase") != "succeeded":
        raise typer.Exit(EXIT_WATCH_FAILED)


def _watch(client: GateClient, rollout_id: str, output: Output) -> dict[str, Any]:
    """Follow the stream: a live view on a terminal, a line per state otherwise (a log or
    a pipe), JSON lines with ``--output json``. Returns the final state."""
    from rich.live import Live

    from gate.cli.render import rollout_line, rollout_view

    last: dict[str, Any] = {}
    console = _stdout()
    if output is Output.JSON:
        for last in client.watch(rollout_id):
            sys.stdout.write(json.dumps(last) + "\n")
            sys.stdout.flush()
    elif console.is_terminal:
        with Live(console=console, auto_refresh=False, transient=False) as live:
            for last in client.watch(rollout_id):
                live.update(rollout_view(last), refresh=True)
    else:
        for last in client.watch(rollout_id):
            console.print(rollout_line(last), markup=False)
    return last


def _analysis(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--analysis") from exc
    if not isinstance(value, dict):
        raise typer.BadParameter("must be a JSON object", param_hint="--analysis")
    return value


def _artifact(uri: str) -> str:
    """A local path is sent absolute: the gate runs elsewhere, and a relative path would
    name something else there. URIs (``gs://...``) go as given."""
    if "://" not in uri and Path(uri).exists():
        return str(Path(uri).resolve())
    return uri


@rollouts.command("create")
def create_rollout(
    model: Annotated[str, typer.Option(help="model name, e.g. iris")],
    version: Annotated[str, typer.Option(help="the candidate's version")],
    artifact_uri: Annotated[
        str, typer.Option(help="the candidate's artifact: a registry path or a storage URI")
    ],
    accuracy: Annotated[float, typer.Option(help="the candidate's offline accuracy")],
    analysis: Annotated[
        str | None,
        typer.Option(help="analysis overrides as JSON, e.g. '{\"steps\": [25, 50, 100]}'"),
    ] = None,
    holdout_uri: Annotated[
        str | None, typer.Option(help="held-out set, if not the artifact's own")
    ] = None,
    digest: Annotated[
        str | None, typer.Option(help="sha256:<hex> of the model file (pinned end to end)")
    ] = None,
    gate_url: GateUrl = DEFAULT_GATE_URL,
    token: Token = None,
    output: OutputOption = Output.HUMAN,
) -> None:
    """Start a rollout of a candidate: accuracy gate, shadow, canary steps."""
    from gate.cli.render import rollout_line

    candidate: dict[str, Any] = {
        "version": version,
        "artifact_uri": _artifact(artifact_uri),
        "offline_metrics": {"accuracy": accuracy},
    }
    if holdout_uri is not None:
        candidate["holdout_uri"] = holdout_uri
    if digest is not None:
        candidate["digest"] = digest
    body: dict[str, Any] = {"model": model, "candidate": candidate}
    overrides = _analysis(analysis)
    if overrides is not None:
        body["analysis"] = overrides
    with gate_client(gate_url, token) as client:
        _show(output, client.create_rollout(body), lambda r: f"created {rollout_line(r)}")


def _command(name: str, help_text: str) -> None:
    def command(
        rollout_id: RolloutIdArg,
        gate_url: GateUrl = DEFAULT_GATE_URL,
        token: Token = None,
        output: OutputOption = Output.HUMAN,
    ) -> None:
        from gate.cli.render import rollout_line

        with gate_client(gate_url, token) as client:
            _show(output, client.command(rollout_id, name), rollout_line)

    command.__doc__ = help_text
    rollouts.command(name)(command)


_command("pause", "Hold the rollout at its current weight (it is not judged meanwhile).")
_command("resume", "Continue a paused rollout.")
_command("abort", "Roll back now: canary weight 0, candidate removed.")


@rollouts.command("promote")
def promote(
    rollout_id: RolloutIdArg,
    full: Annotated[
        bool, typer.Option("--full", help="promote to the end now, not to the next step")
    ] = False,
    gate_url: GateUrl = DEFAULT_GATE_URL,
    token: Token = None,
    output: OutputOption = Output.HUMAN,
) -> None:
    """Move to the next step (from the shadow phase: the first; from the last: the
    promotion), or with --full promote now. During a post-promotion watch: end it."""
    from gate.cli.render import rollout_line

    with gate_client(gate_url, token) as client:
        _show(output, client.command(rollout_id, "promote", full=full), rollout_line)


HOOK_TYPES = ("confirm-rollout", "confirm-traffic-increase", "confirm-promotion", "rollback")


@rollouts.command("approve")
def approve(
    rollout_id: RolloutIdArg,
    hook_type: Annotated[
        str | None,
        typer.Option(
            "--type",
            help=f"the hook type to approve ahead ({', '.join(HOOK_TYPES)}); default: the one "
            "the rollout waits for",
        ),
    ] = None,
    gate_url: GateUrl = DEFAULT_GATE_URL,
    token: Token = None,
    output: OutputOption = Output.HUMAN,
) -> None:
    """Answer the rollout's own approval hook (a hook with url 'approval'): the held move
    goes through at the next tick."""
    from gate.cli.render import rollout_line

    if hook_type is not None and hook_type not in HOOK_TYPES:
        raise typer.BadParameter(f"one of {', '.join(HOOK_TYPES)}", param_hint="--type")
    with gate_client(gate_url, token) as client:
        _show(output, client.approve(rollout_id, hook_type), rollout_line)


_INTEGER = re.compile(r"^-?\d+$")


def _class(value: str) -> int | str:
    """A class id (``1``) or a class name (``setosa``), as the model's answer gives it."""
    return int(value) if _INTEGER.match(value) else value


def parse_label(text: str) -> dict[str, Any]:
    """``ID=CLASS``, or ``ID=C1,C2,...`` for a request of several rows."""
    request_id, sep, value = text.partition("=")
    if not sep or not request_id or not value:
        raise typer.BadParameter(f"{text!r} is not ID=CLASS", param_hint="--label")
    classes = [_class(v.strip()) for v in value.split(",")]
    return {"id": request_id, "label": classes if len(classes) > 1 else classes[0]}


def read_labels(path: Path) -> list[dict[str, Any]]:
    """A labels file: ``[{"id": ..., "label": ...}, ...]``, ``{"id": label, ...}``, or the
    API's own body (``{"labels": [...]}``)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--file") from exc
    if isinstance(data, dict) and isinstance(data.get("labels"), list):
        data = data["labels"]
    if isinstance(data, dict):
        return [{"id": str(k), "label": v} for k, v in data.items()]
    if isinstance(data, list) and all(isinstance(i, dict) for i in data):
        return data
    raise typer.BadParameter(
        'expected [{"id": ..., "label": ...}, ...] or {"<id>": <label>, ...}',
        param_hint="--file",
    )


@app.command("feedback")
def feedback(
    model: Annotated[str, typer.Option(help="model name, e.g. iris")],
    label: Annotated[
        list[str] | None,
        typer.Option(help="ID=CLASS (or ID=C1,C2 for several rows); repeat for more"),
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="labels as JSON (a list or an id->label map)")
    ] = None,
    gate_url: GateUrl = DEFAULT_GATE_URL,
    token: Token = None,
    output: OutputOption = Output.HUMAN,
) -> None:
    """Send true labels for answered requests (by request id), for live accuracy. Needs
    the API token or the feedback-only token."""
    labels = [parse_label(text) for text in label or []]
    if file is not None:
        labels += read_labels(file)
    if not labels:
        raise typer.BadParameter("give --label ID=CLASS or --file", param_hint="--label")
    with gate_client(gate_url, token) as client:
        _show(
            output,
            client.feedback(model, labels),
            lambda r: (
                f"accepted {r.get('accepted')} labels ({r.get('unknown')} for ids "
                "with no recorded answer yet)"
            ),
        )


def main() -> None:
    """The console script."""
    app()
