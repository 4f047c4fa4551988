"""What a rollout is asked to do: the candidate and the analysis it must pass.

Pydantic models shared by the API (request/response schemas), the store (JSON columns)
and the pure decision logic. No I/O here.
"""

from __future__ import annotations

import itertools
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from gate.core.bounds import LOCATION_PATTERN, MAX_LOCATION_LENGTH, STRICT_FINITE
from gate.core.hooks import MAX_HOOKS, Hook


class Phase(StrEnum):
    VALIDATING = "validating"  # accuracy gate: candidate started, held-out set replayed
    SHADOW = "shadow"  # live requests replayed to the candidate; clients get stable's answers
    PROGRESSING = "progressing"  # canary steps
    PROMOTING = "promoting"
    WATCHING = "watching"  # promoted; the previous stable kept warm and compared on labels
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


# Bounds shared by AnalysisSpec and AnalysisOverrides: a request can only ask for what a
# rollout can hold (finite, in range) and the store can write and read back.
MAX_STEPS = 100
MAX_STEP_INTERVAL_S = 86_400.0  # one day per step
MAX_P99_MS = 3_600_000.0  # one hour
MAX_LATENCY_MARGIN = 1_000.0
MAX_GENERATED_RATE = 200.0  # requests per second the gate may add
MAX_SHADOW_RATE = 1_000.0  # logged requests per second the gate may replay to a candidate
MAX_LIMIT = 1_000


def _integral(value: Any) -> Any:
    """``10.0`` is an integer in JSON Schema (and to schemathesis); strict pydantic would
    refuse it. Strings, booleans and ``10.5`` still fail as ``int_type``."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Integral = BeforeValidator(_integral)  # after the bounds, or they leave the JSON Schema
Percent = Annotated[int, Field(ge=1, le=100), Integral]
Steps = Annotated[list[Percent], Field(min_length=1, max_length=MAX_STEPS)]
StepInterval = Annotated[float, Field(gt=0, le=MAX_STEP_INTERVAL_S)]
Rate = Annotated[float, Field(ge=0, le=1)]
P99Ms = Annotated[float, Field(gt=0, le=MAX_P99_MS)]
Confidence = Annotated[float, Field(ge=0.5, le=0.9999)]
Quantile = Annotated[float, Field(ge=0.5, le=0.999)]
LatencyMargin = Annotated[float, Field(gt=0, le=MAX_LATENCY_MARGIN)]
GeneratedRate = Annotated[float, Field(ge=0, le=MAX_GENERATED_RATE)]
ShadowBudget = Annotated[float, Field(ge=0, le=MAX_STEP_INTERVAL_S)]
ShadowRate = Annotated[float, Field(gt=0, le=MAX_SHADOW_RATE)]
Limit = Annotated[int, Field(ge=1, le=MAX_LIMIT), Integral]


def _check_steps(steps: list[int]) -> list[int]:
    if any(b <= a for a, b in itertools.pairwise(steps)):
        raise ValueError("steps must increase")
    return steps


Hooks = Annotated[list[Hook], Field(max_length=MAX_HOOKS)]


def _check_hooks(hooks: list[Hook]) -> list[Hook]:
    names = [hook.name for hook in hooks]
    if len(set(names)) != len(names):
        raise ValueError("hook names must be unique")
    return hooks


class AnalysisSpec(BaseModel):
    """How a candidate is judged. Every field can be overridden per rollout."""

    model_config = ConfigDict(**STRICT_FINITE, use_attribute_docstrings=True)

    steps: Steps = Field(default_factory=lambda: [10, 25, 50, 100])
    """Canary traffic percentages, in order; the last one is reached before promotion."""
    step_interval_s: StepInterval = 30.0
    """How long a step lasts unless it passes early: at its end an intermediate step
    without a regression shown moves on; the last step is extended until it passes."""
    confidence: Confidence = 0.95
    """How sure the gate must be: a canary beyond a margin is promoted, and a healthy
    canary is failed, each with probability at most 1 - confidence."""
    error_rate_margin: Rate = 0.005
    """The server-error regression not to let through: how much the canary's rate may
    exceed stable's (0.005 = +0.5 points). The canary passes when it is shown below."""
    latency_quantile: Quantile = 0.95
    """Which latency quantile the relative latency check compares."""
    latency_margin: LatencyMargin = 0.25
    """The latency regression not to let through: the canary's quantile may be at most
    (1 + margin) times stable's (0.25 = +25 %)."""
    class_shift_margin: Rate = 0.1
    """The predicted-class shift not to let through: total-variation distance between
    the canary's and stable's class mixes (0.1 = 10 % of answers change class)."""
    max_error_rate: Rate = 0.01
    """Hard ceiling: the canary fails when its server-error rate (HTTP 5xx, gRPC
    INTERNAL/UNAVAILABLE/...) is shown above this, whatever stable does."""
    max_p99_ms: P99Ms = 250.0
    """Hard ceiling: the canary fails when its latency p99 is shown above this."""
    generated_rate_per_s: GeneratedRate = 0.0
    """When live traffic is thin: the gate sends rows of the artifact's held-out set to
    canary and stable at this rate (requests per second, split evenly), marked so the
    predictors count them apart. 0: none. A regression shown on them always fails."""
    generated_counts: bool = False
    """Whether a step may also pass on the generated requests (judged apart from live
    ones, with the pass-side confidence split between the two); every such decision is
    labelled."""
    accuracy_margin: Rate = 0.02
    """The live-accuracy drop not to let through, judged on answers whose true labels
    arrived (``POST /v1/feedback``): the canary fails when its accuracy is shown more
    than half this below stable's, and (with ``require_labels``) passes when shown less
    than this below."""
    require_labels: bool = False
    """Whether a step must show the accuracy margin on labelled answers before it
    passes (waiting for labels is inconclusive, up to ``inconclusive_limit``). Without
    it, labels can only fail a canary."""
    shadow_s: ShadowBudget = 120.0
    """The shadow phase's budget, between the accuracy gate and the first step: live
    requests stable answered are replayed to the candidate (clients only ever get
    stable's answers) and the two answers compared per request. It ends early when the
    disagreement is shown within its margin (the steps begin) or beyond it (the rollout
    fails before any user got a candidate's answer); undecided at the budget's end, the
    steps begin. 0: no shadow phase. Skipped when the model has no stable yet."""
    shadow_disagreement_margin: Rate = 0.02
    """The share of rows the candidate may classify differently from stable on the same
    live requests (0.02 = 2 %): the shadow phase fails when it is shown above, passes
    when shown below."""
    shadow_rate_per_s: ShadowRate = 50.0
    """At most this many logged requests per second are replayed to the candidate (the
    rest are counted as skipped): the shadow phase never loads a candidate like live
    traffic would."""
    watch_s: ShadowBudget = 0.0
    """The post-promotion watch: for this long after a promotion the previous stable
    stays warm, the new stable's live requests are replayed to it, and where true labels
    arrive the two accuracies on the same requests are compared. A drop shown beyond
    half ``accuracy_margin`` is recorded and announced (``watch-failure``) and, with
    ``watch_rollback``, rolls back to the previous stable. 0: no watch (the rollout ends
    at promotion). Needs labels (``POST /v1/feedback``) to find anything."""
    watch_rollback: bool = True
    """Whether a drop the watch shows rolls back to the previous stable (true) or is
    only recorded and announced (false)."""
    failure_limit: Limit = 2
    """Failed analyses that trigger a rollback."""
    inconclusive_limit: Limit = 60
    """Extensions of a step (one step interval each) for lack of evidence before the
    rollout is rolled back; the last step needs every margin shown, so at low traffic
    it is extended until the evidence is there or this limit is reached."""
    error_limit: Limit = 5
    """Consecutive analyses with the metrics backend unreachable before a rollback."""
    accuracy_threshold: Rate = 0.9
    """Offline and live-replay accuracy must both reach this."""
    accuracy_tolerance: Rate = 0.05
    """Largest allowed gap between offline and live-replay accuracy."""
    hooks: Hooks = Field(default_factory=list)
    """Gating hooks, Flagger's types and semantics (:mod:`gate.core.hooks`): confirm-*
    hold the rollout until they answer 2xx, pre-rollout and rollout answering otherwise
    count as failed checks, a rollback hook answering 2xx rolls back, post-rollout is
    told the end. Each URL must lie under GATE_HOOK_ALLOWED_PREFIXES, or be 'approval'."""

    @field_validator("steps")
    @classmethod
    def _steps_increase(cls, steps: list[int]) -> list[int]:
        return _check_steps(steps)

    @field_validator("hooks")
    @classmethod
    def _hook_names_unique(cls, hooks: list[Hook]) -> list[Hook]:
        return _check_hooks(hooks)

    def proving_step(self, index: int) -> bool:
        """Must the step at ``index`` show every margin before it passes? The last step
        below 100 % does: stable still serves there, and at 100 % it serves nothing, so
        extending a 100 % step could never add the stable evidence a margin needs. A
        rollout whose only step is 100 % proves it there, against what stable served
        before (often nothing: give such a rollout a step below 100 %)."""
        below = [i for i, weight in enumerate(self.steps) if weight < 100]
        return index == (below[-1] if below else len(self.steps) - 1)


def steps_from_weights(step_weight: int, max_weight: int) -> list[int]:
    """Flagger's ``stepWeight``/``maxWeight`` form: 10, 20, ... up to max_weight."""
    if not 0 < step_weight <= max_weight <= 100:
        raise ValueError("need 0 < step_weight <= max_weight <= 100")
    return list(range(step_weight, max_weight + 1, step_weight))


MAX_VERSION_DIGITS = 18  # fits an int64 and a file name
MAX_METRICS = 64
METRIC_NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"

Location = Annotated[
    str, Field(min_length=1, max_length=MAX_LOCATION_LENGTH, pattern=LOCATION_PATTERN)
]
MetricName = Annotated[str, Field(min_length=1, max_length=64, pattern=METRIC_NAME_PATTERN)]


def _offline_metrics_schema(schema: dict[str, Any]) -> None:
    """Say in the OpenAPI schema what the validator enforces: named keys, finite numbers,
    ``accuracy`` required and in [0, 1] (pydantic would describe the key rule as
    ``patternProperties``, which lets any other key through)."""
    for key in ("patternProperties", "propertyNames", "additionalProperties"):
        schema.pop(key, None)
    schema.update(
        type="object",
        propertyNames={
            "type": "string",
            "minLength": 1,
            "maxLength": 64,
            "pattern": METRIC_NAME_PATTERN,
        },
        additionalProperties={"type": "number"},
        properties={"accuracy": {"type": "number", "minimum": 0, "maximum": 1}},
        required=["accuracy"],
        minProperties=1,
        maxProperties=MAX_METRICS,
    )


class Candidate(BaseModel):
    model_config = ConfigDict(**STRICT_FINITE)

    version: str = Field(
        pattern=r"^[0-9]+$",
        min_length=1,
        max_length=MAX_VERSION_DIGITS,
        description="model version to roll out: digits",
    )
    artifact_uri: Location = Field(
        description="where the artifact is: a directory inside the gate's registry (local "
        "backend) or a storage URI under an allowed prefix (kserve backend)"
    )
    offline_metrics: dict[MetricName, float] = Field(
        max_length=MAX_METRICS,
        description="metrics from the pipeline, finite numbers; 'accuracy' (0..1) is required",
        json_schema_extra=_offline_metrics_schema,
    )
    holdout_uri: Location | None = Field(
        None,
        description="labelled held-out CSV for the live replay: the artifact's own "
        "holdout.csv or a location under an operator-allowed prefix; default: holdout.csv "
        "inside artifact_uri",
    )
    digest: str | None = Field(
        None,
        pattern=r"^sha256:[0-9a-f]{64}$",
        description="sha256 of the model file, as the pipeline registered it: the gate pins "
        "it and the candidate predictor refuses any other bytes. Local backend: read from "
        "the artifact's signed manifest when left out; kserve backend: required",
    )

    @field_validator("offline_metrics")
    @classmethod
    def _has_accuracy(cls, metrics: dict[str, float]) -> dict[str, float]:
        if "accuracy" not in metrics:
            raise ValueError("offline_metrics must include 'accuracy'")
        if not 0 <= metrics["accuracy"] <= 1:
            raise ValueError("offline_metrics.accuracy must be in [0, 1]")
        return metrics


class AnalysisOverrides(BaseModel):
    """Partial :class:`AnalysisSpec` with the same bounds; ``step_weight``/``max_weight``
    build ``steps``."""

    model_config = ConfigDict(**STRICT_FINITE)

    steps: Steps | None = None
    step_weight: Percent | None = None
    max_weight: Percent | None = None
    step_interval_s: StepInterval | None = None
    confidence: Confidence | None = None
    error_rate_margin: Rate | None = None
    latency_quantile: Quantile | None = None
    latency_margin: LatencyMargin | None = None
    class_shift_margin: Rate | None = None
    max_error_rate: Rate | None = None
    max_p99_ms: P99Ms | None = None
    generated_rate_per_s: GeneratedRate | None = None
    generated_counts: bool | None = None
    accuracy_margin: Rate | None = None
    require_labels: bool | None = None
    shadow_s: ShadowBudget | None = None
    shadow_disagreement_margin: Rate | None = None
    shadow_rate_per_s: ShadowRate | None = None
    watch_s: ShadowBudget | None = None
    watch_rollback: bool | None = None
    failure_limit: Limit | None = None
    inconclusive_limit: Limit | None = None
    error_limit: Limit | None = None
    accuracy_threshold: Rate | None = None
    accuracy_tolerance: Rate | None = None
    hooks: Hooks | None = None

    @field_validator("steps")
    @classmethod
    def _steps_increase(cls, steps: list[int] | None) -> list[int] | None:
        return None if steps is None else _check_steps(steps)

    @field_validator("hooks")
    @classmethod
    def _hook_names_unique(cls, hooks: list[Hook] | None) -> list[Hook] | None:
        return None if hooks is None else _check_hooks(hooks)

    @model_validator(mode="after")
    def _one_way_to_give_steps(self) -> AnalysisOverrides:
        weights = self.step_weight is not None or self.max_weight is not None
        if self.steps is not None and weights:
            raise ValueError("give either steps or step_weight/max_weight, not both")
        if weights and self.step_weight_or_default > self.max_weight_or_default:
            raise ValueError(
                f"step_weight ({self.step_weight_or_default}) must not exceed max_weight "
                f"({self.max_weight_or_default})"
            )
        return self

    @property
    def step_weight_or_default(self) -> int:
        return self.step_weight if self.step_weight is not None else 10

    @property
    def max_weight_or_default(self) -> int:
        return self.max_weight if self.max_weight is not None else 100

    def apply(self, base: AnalysisSpec) -> AnalysisSpec:
        values: dict[str, Any] = base.model_dump()
        given = self.model_dump(exclude_none=True)
        given.pop("step_weight", None)
        given.pop("max_weight", None)
        if self.step_weight is not None or self.max_weight is not None:
            given["steps"] = steps_from_weights(
                self.step_weight_or_default, self.max_weight_or_default
            )
        values.update(given)
        return AnalysisSpec.model_validate(values)
