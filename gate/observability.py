"""The gate's own Prometheus metrics: where each rollout is and what was decided."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from gate.core.spec import Phase
from gate.core.state import RolloutState


class GateMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.phase = Gauge(
            "irisgate_gate_rollout_phase",
            "1 for the phase each rollout is in, 0 for the others.",
            ["rollout", "model", "phase"],
            registry=registry,
        )
        self.weight = Gauge(
            "irisgate_gate_canary_weight",
            "Canary traffic percentage the gate wants for each rollout.",
            ["rollout", "model"],
            registry=registry,
        )
        self.decisions = Counter(
            "irisgate_gate_decisions_total",
            "Decisions recorded, by action and analysis outcome.",
            ["model", "action", "outcome"],
            registry=registry,
        )
        self.webhooks = Counter(
            "irisgate_gate_webhook_deliveries_total",
            "Webhook delivery attempts by result.",
            ["result"],
            registry=registry,
        )

    def record(self, state: RolloutState, action: str, outcome: str | None) -> None:
        for phase in Phase:
            self.phase.labels(state.id, state.model, phase.value).set(
                1 if phase is state.phase else 0
            )
        self.weight.labels(state.id, state.model).set(state.canary_weight)
        self.decisions.labels(state.model, action, outcome or "none").inc()
