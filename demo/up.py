"""What ``python -m demo --up`` (``make up``) tells its user: where the stack listens, the
version it serves and the commands to paste in another terminal. README's "Use the stack"
section runs the same commands (tests/integration/test_demo.py)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import httpx
from rich.markup import escape

from demo.stack import Stack


def served_version(stack: Stack, model: str = "iris") -> str:
    """The version the router's stable answers as (its v2 metadata): the gate's store
    decides which one serves, not the newest registry folder (after a rollback the newest
    folder is the rejected candidate)."""
    try:
        metadata = httpx.get(f"{stack.router_url}/v2/models/{model}", timeout=10).json()
        return str(metadata["versions"][0])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
        return "?"


def venv_hint() -> str:
    """How to get this interpreter's venv onto PATH, as a shell line: the banner's
    commands (``python -m pipeline``, ``irisgate``) fail with the system Python."""
    prefix = Path(sys.prefix)
    if prefix == Path(sys.base_prefix):
        return ""  # not a venv: the commands run with this Python as they are
    with contextlib.suppress(ValueError):
        prefix = prefix.relative_to(Path.cwd())
    return f"source {prefix}/bin/activate   # or prefix each command with {prefix}/bin/"


def up_banner(stack: Stack, registry: Path, version: str, traffic_users: int) -> str:
    """What ``make up`` prints: where everything listens, and the commands to paste in
    another terminal to use it (the same as README's "Use the stack")."""
    hint = venv_hint()
    traffic_line = (
        f"  live traffic: locust's REST and gRPC users ({traffic_users}), labels to the gate"
        if traffic_users
        else "  no traffic yet: a rollout needs live requests (README: Use the stack), or "
        "restart with --traffic"
    )
    candidate = f"python -m pipeline run --registry {escape(str(registry))}"
    return "\n".join(
        [
            f"[bold green]serving iris version {escape(version)}[/]",
            f"  REST   {stack.router_url}  (v1 /v1/models/iris:predict, v2 /v2/models/iris/infer)",
            f"  gRPC   {stack.router_grpc}",
            f"  gate   {stack.gate_url}  (dashboard {stack.gate_url}/ui/)",
            f"  router admin  {stack.router_admin_url}/router/routes",
            traffic_line,
            "In another terminal, from this folder:",
            *([f"  {escape(hint)}"] if hint else []),
            f"  export GATE_API_TOKEN={stack.token} ROUTER_ADMIN_TOKEN={stack.router_token}",
            f"  {candidate} --gate-url {stack.gate_url}   # a candidate",
            f"  irisgate rollouts list --gate-url {stack.gate_url}",
            f"logs  {escape(str(stack.logs))}",
            "Ctrl-C stops everything.",
        ]
    )
