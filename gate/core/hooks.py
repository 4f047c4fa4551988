"""Gating hooks, Flagger's in shape: what a hook is, what it is sent, what its answer means.

Flagger's Canary ``analysis.webhooks`` let something outside the controller hold or fail
a rollout; operators who know Flagger (or run its load tester) can point the same
receivers at the gate. The types, their moments and their meaning are Flagger's
(https://docs.flagger.app/usage/webhooks):

- ``confirm-rollout``: before the candidate is started. Anything but 2xx holds the
  rollout, asked again every tick (manual approval of a rollout).
- ``pre-rollout``: before the first canary step sends it users' requests. Not 2xx counts
  as a failed check; at ``failure_limit`` the rollout fails, having answered no user.
- ``rollout``: once per step window, before the step is judged. Not 2xx fails the
  window's analysis (so a step is retried, then rolled back at ``failure_limit``).
- ``confirm-traffic-increase``: before each raise of the canary weight. Not 2xx holds;
  the analysis goes on looking meanwhile, so a regression still rolls back.
- ``confirm-promotion``: before an analysed promotion, likewise.
- ``post-rollout``: after the promotion or the rollback; the answer is only recorded.
- ``rollback``: every tick of the shadow phase and the steps; a **2xx** answer rolls the
  rollout back (an external kill switch), anything else is ignored.

A hook whose URL is :data:`APPROVAL` is the gate's own approval: it answers "yes" once a
user approved that type for the rollout (``POST /v1/rollouts/{id}/approve``, the CLI's
``approve``, the dashboard's button); an approval of a confirm type is used up by the
move it let through, so each weight raise asks again. Manual commands (pause, resume,
promote, abort) are a user's decision and pass no hook.

Pure: the controller calls the receivers (:mod:`gate.hooks`) and hands the answers here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from gate.core.bounds import LOCATION_PATTERN, MAX_LOCATION_LENGTH, STRICT_FINITE

APPROVAL = "approval"
"""The URL of the gate's own approval hook (no network: answered from the rollout)."""
MAX_HOOKS = 20
MAX_HOOK_TIMEOUT_S = 60.0
MAX_METADATA = 32


class HookType(StrEnum):
    CONFIRM_ROLLOUT = "confirm-rollout"
    PRE_ROLLOUT = "pre-rollout"
    ROLLOUT = "rollout"
    CONFIRM_TRAFFIC_INCREASE = "confirm-traffic-increase"
    CONFIRM_PROMOTION = "confirm-promotion"
    POST_ROLLOUT = "post-rollout"
    ROLLBACK = "rollback"


CONFIRM = frozenset(
    {HookType.CONFIRM_ROLLOUT, HookType.CONFIRM_TRAFFIC_INCREASE, HookType.CONFIRM_PROMOTION}
)
"""Types whose refusal holds the rollout (and that a user's approval can answer)."""
APPROVABLE = CONFIRM | {HookType.ROLLBACK}

HookName = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9._ -]+$")]
MetadataValue = Annotated[str, Field(max_length=1024)]


class Hook(BaseModel):
    """One hook, as Flagger's ``CanaryWebhook``: a name, a type, a URL, a timeout and
    metadata passed through to the receiver."""

    model_config = ConfigDict(**STRICT_FINITE)

    name: HookName
    type: Annotated[HookType, Field(strict=False)]  # its value as a JSON string
    url: Annotated[
        str, Field(min_length=1, max_length=MAX_LOCATION_LENGTH, pattern=LOCATION_PATTERN)
    ] = Field(
        description=f"an http(s) URL under one of GATE_HOOK_ALLOWED_PREFIXES, or "
        f"'{APPROVAL}' for the gate's own approval (POST /v1/rollouts/{{id}}/approve)"
    )
    timeout_s: float = Field(
        10.0, gt=0, le=MAX_HOOK_TIMEOUT_S, description="how long an answer may take"
    )
    metadata: dict[HookName, MetadataValue] = Field(
        default_factory=dict, max_length=MAX_METADATA, description="sent as is"
    )


class HookResult(BaseModel):
    """One call's answer, as the decision evidence keeps it."""

    name: str
    type: HookType
    ok: bool
    """2xx (for the approval hook: approved)."""
    status: int | None = None
    """The HTTP status; None when no answer came (timeout, refused connection)."""
    reason: str
    duration_ms: float = 0.0


def of_type(hooks: Iterable[Hook], kind: HookType) -> list[Hook]:
    return [hook for hook in hooks if hook.type is kind]


def refused(results: Sequence[HookResult]) -> str | None:
    """For every type but ``rollback``: None when every hook said yes, else why not."""
    bad = [r for r in results if not r.ok]
    if not bad:
        return None
    return "; ".join(f"{r.type.value} hook '{r.name}': {r.reason}" for r in bad)


def asked_rollback(results: Sequence[HookResult]) -> str | None:
    """For ``rollback`` hooks: why to roll back (a hook said yes), or None."""
    yes = [r for r in results if r.ok]
    if not yes:
        return None
    return "; ".join(f"rollback hook '{r.name}' asked for a rollback ({r.reason})" for r in yes)


FLAGGER_PHASES: dict[str, str] = {
    "validating": "Progressing",
    "shadow": "Progressing",
    "progressing": "Progressing",
    "promoting": "Promoting",
    "watching": "Succeeded",
    "succeeded": "Succeeded",
    "rolling_back": "Failed",
    "rolled_back": "Failed",
    "failed": "Failed",
    "aborted": "Failed",
}
"""The phase a Flagger receiver expects in the payload's ``phase``, by our phase's value
(ours is in ``irisgate.phase``). A held rollout is ``Waiting`` (``WaitingPromotion``
before a promotion), as Flagger reports it."""


def flagger_phase(phase: str, held_by: HookType | None) -> str:
    if held_by is HookType.CONFIRM_PROMOTION:
        return "WaitingPromotion"
    if held_by is not None:
        return "Waiting"
    return FLAGGER_PHASES.get(phase, "Progressing")


__all__ = [
    "APPROVABLE",
    "APPROVAL",
    "CONFIRM",
    "MAX_HOOKS",
    "Hook",
    "HookResult",
    "HookType",
    "asked_rollback",
    "flagger_phase",
    "of_type",
    "refused",
]
