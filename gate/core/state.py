"""A rollout's persisted state: a data type, with no decisions in it.

The store keeps it as JSON; :mod:`gate.core.decide` computes the next one; the controller
persists it before it touches traffic. Everything a restarted gate needs to resume is
here, including the deadlines that stand in for waiting (nothing in a tick blocks).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field

from gate.core.analysis import WindowMeasurement
from gate.core.hooks import HookResult, HookType
from gate.core.spec import TERMINAL, AnalysisSpec, Candidate, Phase


class RolloutState(BaseModel):
    id: str
    model: str
    candidate: Candidate
    spec: AnalysisSpec
    phase: Phase = Phase.VALIDATING
    paused: bool = False
    aborted: bool = False
    step_index: int = -1
    canary_weight: int = 0
    failures: int = 0
    inconclusive: int = 0
    errors: int = 0
    candidate_started: bool = False
    """The deployer was asked to start the candidate (its facts are in backend_state)."""
    candidate_deadline: datetime | None = None
    """The candidate must be ready by then, or the accuracy gate fails."""
    not_before: datetime | None = None
    """After an error: the next attempt waits until then (no tight retry loop)."""
    window_start: datetime | None = None
    step_deadline: datetime | None = None
    window_baseline: dict[str, Any] | None = None
    stable_version: str | None = None
    """The stable when the rollout began (during a post-promotion watch: the previous)."""
    promoted: bool = False
    """The candidate took all traffic as the new stable: during a post-promotion watch,
    rolling back restores the previous stable (``backend_state["previous"]``)."""
    evidence: WindowMeasurement | None = None
    """The rollout's finished windows, summed: what the analysis adds the current
    window to (so stable's earlier traffic still counts when the canary takes 100 %)."""
    held_by: HookType | None = None
    """A confirm-* hook that refused the next move: the rollout waits, asked again each
    tick (:mod:`gate.core.hooks`)."""
    approvals: list[HookType] = Field(default_factory=list)
    """Types a user approved for the gate's own approval hook, not used up yet."""
    window_hooks: list[HookResult] | None = None
    """The step window's rollout hook answers (they are asked once per window; None:
    not yet), kept for the evidence of the decision that ends the window."""
    backend_state: dict[str, Any] = Field(default_factory=dict)
    message: str = ""
    created_at: datetime
    updated_at: datetime

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL

    def start_window(self, now: datetime) -> RolloutState:
        return self.model_copy(
            update={
                "window_start": now,
                "window_baseline": None,
                "window_hooks": None,
                "step_deadline": now + timedelta(seconds=self.spec.step_interval_s),
            }
        )
