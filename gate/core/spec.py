"""What a rollout is asked to do: the candidate and the analysis it must pass.

Pydantic models shared by the API (request/response schemas), the store (JSON columns)
and the pure decision logic. No I/O here.
"""

from __future__ import annotations

import itertools
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Phase(StrEnum):
    VALIDATING = "validating"  # accuracy gate: candidate started, held-out set replayed
    PROGRESSING = "progressing"  # canary steps
    PROMOTING = "promoting"
    SUCCEEDED = "succeeded"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"  # never got traffic: the accuracy gate or its set-up failed
    ABORTED = "aborted"


TERMINAL = frozenset({Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.FAILED, Phase.ABORTED})


class Outcome(StrEnum):
    """Argo Rollouts' four outcomes: each has its own limit, and no data is never a pass."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    ERROR = "error"


class AnalysisSpec(BaseModel):
    """How a candidate is judged. Every field can be overridden per rollout."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    steps: list[int] = Field(default_factory=lambda: [10, 25, 50, 100])
    """Canary traffic percentages, in order; the last one is reached before promotion."""
    step_interval_s: float = Field(30.0, gt=0)
    """How long each step collects metrics before it is judged."""
    min_requests: int = Field(50, ge=1)
    """Canary requests a step needs; fewer makes the step inconclusive (and extended)."""
    max_error_rate: float = Field(0.01, ge=0, le=1)
    """Highest canary server-error rate (HTTP 5xx, gRPC INTERNAL/UNAVAILABLE/...)."""
    max_error_rate_increase: float = Field(0.01, ge=0, le=1)
    """How much the canary's error rate may exceed stable's in the same window."""
    max_p99_ms: float = Field(250.0, gt=0)
    """Highest canary latency p99 in milliseconds."""
    max_p99_ratio: float = Field(3.0, gt=0)
    """Highest canary p99 as a multiple of stable's p99 in the same window."""
    max_drift: float = Field(0.1, ge=0, le=1)
    """Highest Jensen-Shannon divergence (base 2, 0..1) between the predicted-class
    distributions of canary and stable."""
    failure_limit: int = Field(2, ge=1)
    """Failed analyses that trigger a rollback."""
    inconclusive_limit: int = Field(5, ge=1)
    """Extensions of a step for lack of data before the rollout is rolled back."""
    error_limit: int = Field(5, ge=1)
    """Consecutive analyses with the metrics backend unreachable before a rollback."""
    accuracy_threshold: float = Field(0.9, ge=0, le=1)
    """Offline and live-replay accuracy must both reach this."""
    accuracy_tolerance: float = Field(0.05, ge=0, le=1)
    """Largest allowed gap between offline and live-replay accuracy."""

    @field_validator("steps")
    @classmethod
    def _steps_increase_to_at_most_100(cls, steps: list[int]) -> list[int]:
        if not steps:
            raise ValueError("at least one step is needed")
        if any(not 0 < s <= 100 for s in steps):
            raise ValueError("each step is a percentage in 1..100")
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError("steps must increase")
        return steps


def steps_from_weights(step_weight: int, max_weight: int) -> list[int]:
    """Flagger's ``stepWeight``/``maxWeight`` form: 10, 20, ... up to max_weight."""
    if not 0 < step_weight <= max_weight <= 100:
        raise ValueError("need 0 < step_weight <= max_weight <= 100")
    return list(range(step_weight, max_weight + 1, step_weight))


class Candidate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(pattern=r"^[0-9]+$", description="model version to roll out")
    artifact_uri: str = Field(
        min_length=1,
        description="where the artifact is: a local registry path (local backend) or a "
        "storage URI (kserve backend)",
    )
    offline_metrics: dict[str, float] = Field(
        default_factory=dict, description="metrics from the pipeline; 'accuracy' is required"
    )
    holdout_uri: str | None = Field(
        None,
        description="labelled held-out CSV for the live replay (a path or http(s) URL); "
        "default: holdout.csv inside artifact_uri",
    )

    @field_validator("offline_metrics")
    @classmethod
    def _has_accuracy(cls, metrics: dict[str, float]) -> dict[str, float]:
        if "accuracy" not in metrics:
            raise ValueError("offline_metrics must include 'accuracy'")
        return metrics


class AnalysisOverrides(BaseModel):
    """Partial :class:`AnalysisSpec`; ``step_weight``/``max_weight`` build ``steps``."""

    model_config = ConfigDict(extra="forbid")

    steps: list[int] | None = None
    step_weight: int | None = Field(None, ge=1, le=100)
    max_weight: int | None = Field(None, ge=1, le=100)
    step_interval_s: float | None = None
    min_requests: int | None = None
    max_error_rate: float | None = None
    max_error_rate_increase: float | None = None
    max_p99_ms: float | None = None
    max_p99_ratio: float | None = None
    max_drift: float | None = None
    failure_limit: int | None = None
    inconclusive_limit: int | None = None
    error_limit: int | None = None
    accuracy_threshold: float | None = None
    accuracy_tolerance: float | None = None

    @model_validator(mode="after")
    def _one_way_to_give_steps(self) -> AnalysisOverrides:
        if self.steps is not None and (self.step_weight or self.max_weight):
            raise ValueError("give either steps or step_weight/max_weight, not both")
        return self

    def apply(self, base: AnalysisSpec) -> AnalysisSpec:
        values: dict[str, Any] = base.model_dump()
        given = self.model_dump(exclude_none=True)
        step_weight = given.pop("step_weight", None)
        max_weight = given.pop("max_weight", None)
        if step_weight or max_weight:
            given["steps"] = steps_from_weights(step_weight or 10, max_weight or 100)
        values.update(given)
        return AnalysisSpec.model_validate(values)
