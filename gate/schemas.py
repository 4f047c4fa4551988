"""API schemas, named by role (FastAPI convention): what clients send and get back."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from gate.core.bounds import STRICT_FINITE
from gate.core.decide import RolloutState
from gate.core.hooks import HookType
from gate.core.paired import PairedEvidence
from gate.core.spec import AnalysisOverrides, AnalysisSpec, Candidate, Integral, Phase
from gate.store import Decision, DecisionEntry

MODEL_NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
MAX_LABELS_PER_POST = 1_000
MAX_LABEL_ROWS = 10_000
# 1.0 is an integer to JSON Schema (and to schemathesis): taken as 1; true, 1.5 are not
ClassId = Annotated[StrictInt, Integral]


class RolloutCreate(BaseModel):
    model_config = ConfigDict(**STRICT_FINITE)

    model: str = Field(
        pattern=MODEL_NAME_PATTERN, max_length=63, description="model name (a DNS label)"
    )
    candidate: Candidate
    analysis: AnalysisOverrides | None = None


class ApprovalCreate(BaseModel):
    """What ``POST /v1/rollouts/{id}/approve`` approves."""

    model_config = ConfigDict(**STRICT_FINITE)

    type: Annotated[HookType | None, Field(strict=False)] = Field(
        None,
        description="the hook type to approve (a confirm-* type, or rollback); default: "
        "the one the rollout waits for",
    )


class RolloutPublic(BaseModel):
    id: str
    model: str
    phase: str
    paused: bool
    candidate: Candidate
    stable_version: str | None = Field(
        description="the model's stable version as this rollout leaves it: the candidate's "
        "once promoted (and not rolled back), else the stable it began with"
    )
    previous_version: str | None = Field(
        None, description="the stable when the rollout began (what a rollback restores)"
    )
    held_by: HookType | None = Field(
        None,
        description="a confirm-* hook holding the next move (approve it if its url is 'approval')",
    )
    approvals: list[HookType] = Field(
        default_factory=list, description="approvals given and not used up yet"
    )
    promoted: bool = Field(
        False,
        description="the candidate took all traffic as the new stable (so far: a "
        "post-promotion watch may still roll it back)",
    )
    canary_weight: int
    step_index: int
    steps: list[int]
    failures: int
    inconclusive: int
    errors: int
    message: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, state: RolloutState) -> RolloutPublic:
        return cls(
            id=state.id,
            model=state.model,
            phase=state.phase.value,
            paused=state.paused,
            candidate=state.candidate,
            stable_version=current_stable(state),
            previous_version=state.stable_version,
            held_by=state.held_by,
            approvals=state.approvals,
            promoted=state.promoted,
            canary_weight=state.canary_weight,
            step_index=state.step_index,
            steps=state.spec.steps,
            failures=state.failures,
            inconclusive=state.inconclusive,
            errors=state.errors,
            message=state.message,
            created_at=state.created_at,
            updated_at=state.updated_at,
        )


def current_stable(state: RolloutState) -> str | None:
    """The stable this rollout leaves: its candidate once promoted, unless a rollback
    (the post-promotion watch, or an abort during it) restored the previous one."""
    restored = state.phase in (Phase.ROLLING_BACK, Phase.ROLLED_BACK, Phase.ABORTED)
    return state.candidate.version if state.promoted and not restored else state.stable_version


class DecisionPublic(DecisionEntry):
    @classmethod
    def of(cls, decision: Decision) -> DecisionPublic:
        return cls.model_validate(decision.model_dump(exclude={"seq", "rollout_id"}))


class RolloutDetail(RolloutPublic):
    analysis: AnalysisSpec
    decisions: list[DecisionPublic]
    shadow_pairs: PairedEvidence | None = Field(
        default=None,
        description="the shadow phase's pairs as they stand now (null: none were made). A "
        "decision's evidence is what it saw; true labels keep joining these pairs after it, "
        "so the labelled accuracies here can cover more rows",
    )
    watch_pairs: PairedEvidence | None = Field(
        default=None,
        description="the post-promotion watch's pairs as they stand now (null: none); "
        "'stable' is the new stable, 'candidate' the previous one",
    )


class Label(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(
        pattern=r"^[A-Za-z0-9._:-]{1,128}$",
        description="the request's id: its x-request-id or ce-id header, as the router or "
        "KServe's logger recorded it",
    )
    label: (
        ClassId
        | Annotated[StrictStr, Field(min_length=1, max_length=200)]
        | Annotated[
            list[ClassId | Annotated[StrictStr, Field(min_length=1, max_length=200)]],
            Field(min_length=1, max_length=MAX_LABEL_ROWS),
        ]
    ) = Field(
        description="the true class, in the form the answer gives it (class id for "
        "'predict', name for 'label'); a list, one per row, for a request of several rows"
    )

    def rows(self) -> tuple[str, ...]:
        values = self.label if isinstance(self.label, list) else [self.label]
        return tuple(str(v) for v in values)


class FeedbackCreate(BaseModel):
    """True labels for answered requests: delayed ground truth, for live accuracy."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(pattern=MODEL_NAME_PATTERN, max_length=63, description="model name")
    labels: list[Label] = Field(min_length=1, max_length=MAX_LABELS_PER_POST)


class FeedbackResult(BaseModel):
    accepted: int
    """Labels kept (a label sent again replaces the earlier one)."""
    unknown: int
    """Of those, ids with no recorded answer yet (kept: the answer may be on its way;
    never an error)."""


class ErrorPublic(BaseModel):
    """Every error the gate itself answers with (401, 404, 409, and 422 for a refused
    candidate): one message naming the field or the thing."""

    detail: str


class ValidationIssue(BaseModel):
    """One problem in a request, as FastAPI reports it: where (``loc``), what, which rule."""

    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorPublic(BaseModel):
    """FastAPI's 422 body for a request that does not match its schema."""

    detail: list[ValidationIssue]
