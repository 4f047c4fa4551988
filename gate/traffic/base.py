"""Two interfaces, as Flagger keeps them apart: ``router.Interface`` moves traffic,
``canary.Controller`` deploys, checks readiness, promotes and retires.

Every method is idempotent and returns quickly: a candidate that is not ready yet is
reported as such (:class:`Readiness`), never waited for inside a tick. Backends return
facts; the controller persists them (stable changes in the same transaction as the
decision that caused them).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from gate.core.state import RolloutState
from gate.providers.base import Targets
from gate.store import Stable


class TrafficError(Exception):
    """The backend could not do what was asked; the message says what and why."""


@dataclass(frozen=True)
class Readiness:
    ready: bool
    problem: str = ""
    """Why not (yet)."""
    gone: bool = False
    """The candidate will never be ready (its process exited): fail now, don't wait."""
    facts: dict[str, Any] = field(default_factory=dict)
    """``backend_state`` additions learned on the way (e.g. the revision's URL)."""


class Router(ABC):
    """The split of live traffic between a model's stable and its canary."""

    @abstractmethod
    async def ensure_stable_route(self, stable: Stable) -> None:
        """Stable receives the traffic the canary does not (after a restart too)."""

    @abstractmethod
    async def get_weight(self, state: RolloutState) -> int:
        """The canary weight the traffic layer really applies now."""

    @abstractmethod
    async def set_weight(self, state: RolloutState, weight: int) -> None: ...

    @abstractmethod
    async def promote(self, state: RolloutState) -> None:
        """The candidate takes all traffic, as the new stable."""

    @abstractmethod
    async def rollback(self, state: RolloutState) -> None:
        """All traffic back to stable; the canary is out of the split."""

    @abstractmethod
    async def restore(self, state: RolloutState, previous: Stable) -> None:
        """After a promotion (during its watch): all traffic back to the previous stable."""

    async def set_mirror(self, model: str, on: bool) -> None:  # noqa: B027 - optional hook
        """Send payload events (KServe's logger format) of the model's live requests to the
        gate, or stop. Idempotent. Traffic layers whose logger is configured with the
        service itself (KServe's ``spec.predictor.logger``) have nothing to do."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release clients."""


class Deployer(ABC):
    """The predictors: start, readiness, what promotion installs, retirement."""

    @abstractmethod
    async def ensure_stable(self, model: str) -> Stable | None:
        """Make sure the recorded stable serves (local: start it if it is not running);
        returns the stable to record, or None if nothing changed or none is known."""

    @abstractmethod
    def plan_candidate(self, state: RolloutState) -> dict[str, Any]:
        """``backend_state`` additions that name the candidate's resources; the controller
        persists them *before* :meth:`start_candidate` (intent first)."""

    @abstractmethod
    async def start_candidate(self, state: RolloutState) -> None:
        """Deploy the planned candidate with no traffic, without waiting for it."""

    @abstractmethod
    async def candidate_ready(self, state: RolloutState) -> Readiness: ...

    @abstractmethod
    def candidate_url(self, state: RolloutState) -> str:
        """REST base URL of the candidate itself (not through the split), for the replay."""

    def stable_url(self, state: RolloutState) -> str | None:
        """REST base URL of stable itself (not through the split), for generated traffic;
        ``None`` when the backend cannot reach it apart (the canary then gets it alone)."""
        return None

    @abstractmethod
    def promoted_stable(self, state: RolloutState) -> Stable:
        """The stable record once the candidate is promoted."""

    def previous_url(self, state: RolloutState) -> str | None:
        """REST base URL of the previous stable during a post-promotion watch, for the
        replay that compares it with the new one; ``None`` when it cannot be reached apart
        (the watch then has no pairs to judge)."""
        return None

    async def ensure_serving(self, previous: Stable) -> None:  # noqa: B027 - optional hook
        """Before traffic goes back to the previous stable: make sure it serves (local: start
        it again if its process exited); raise :class:`TrafficError` while it does not."""

    @abstractmethod
    async def retire(self) -> list[str]:
        """Stop whatever no stable and no active rollout uses any more; returns what was
        stopped. Safe to call at any time, after a restart too."""

    @abstractmethod
    def metrics_targets(self, state: RolloutState) -> Targets: ...

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release clients."""


class TrafficBackend(Router, Deployer):
    """Both seams in one object, for backends whose one API does both (KServe) and for
    test fakes."""
