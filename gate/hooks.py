"""Calling gating hooks: Flagger's payload, a timeout per hook, a bounded read of the answer.

What the answers mean is :mod:`gate.core.hooks`; this module only asks. A hook never
wedges the gate: each call is cut at its ``timeout_s`` (whatever the receiver does: no
answer, a slow trickle, a redirect loop), every failure to get an answer becomes a
refusal with the reason, and the hooks of one moment are asked at once, so a tick waits
at most the longest timeout. Redirects are not followed (the allow-listed URL is the one
called) and at most :data:`MAX_ANSWER_BYTES` of an answer are read, for the reason.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from gate.core.hooks import APPROVAL, Hook, HookResult, HookType, flagger_phase, of_type
from gate.core.state import RolloutState

MAX_ANSWER_BYTES = 1024


def payload(state: RolloutState, hook: Hook, namespace: str) -> dict[str, Any]:
    """Flagger's ``CanaryWebhookPayload`` (name, namespace, phase, checksum, type,
    metadata), so Flagger's load tester and gate receivers work unchanged; what Flagger
    has no word for is under ``irisgate``. ``checksum`` identifies the rollout: a
    receiver that keys approvals by it approves this rollout, not the next one."""
    return {
        "name": state.model,
        "namespace": namespace,
        "phase": flagger_phase(state.phase.value, state.held_by),
        "checksum": state.id,
        "type": hook.type.value,
        "metadata": hook.metadata,
        "irisgate": {
            "rollout_id": state.id,
            "phase": state.phase.value,
            "candidate_version": state.candidate.version,
            "stable_version": state.stable_version,
            "canary_weight": state.canary_weight,
            "step_index": state.step_index,
            "steps": state.spec.steps,
            "message": state.message,
        },
    }


class HookRunner:
    """Asks a rollout's hooks of one type, all at once."""

    def __init__(self, client: httpx.AsyncClient, namespace: str = "default") -> None:
        self._client = client
        self.namespace = namespace

    async def call(self, state: RolloutState, kind: HookType) -> list[HookResult]:
        hooks = of_type(state.spec.hooks, kind)
        return list(await asyncio.gather(*(self._one(state, hook) for hook in hooks)))

    async def _one(self, state: RolloutState, hook: Hook) -> HookResult:
        started = time.monotonic()
        if hook.url == APPROVAL:
            ok = hook.type in state.approvals
            approve = f"irisgate rollouts approve {state.id}"
            reason = "approved by user" if ok else f"not approved yet ({approve})"
            return HookResult(
                name=hook.name, type=hook.type, ok=ok, status=200 if ok else 403, reason=reason
            )
        status: int | None = None
        try:
            async with asyncio.timeout(hook.timeout_s):
                status, body = await self._post(hook, payload(state, hook, self.namespace))
            ok = 200 <= status < 300
            reason = f"HTTP {status}" + (f": {body}" if body else "")
        except TimeoutError:
            ok, reason = False, f"no answer within {hook.timeout_s:g} s"
        except httpx.HTTPError as exc:
            ok, reason = False, f"{type(exc).__name__}: {exc!s:.200}"
        return HookResult(
            name=hook.name,
            type=hook.type,
            ok=ok,
            status=status,
            reason=reason,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )

    async def _post(self, hook: Hook, body: dict[str, Any]) -> tuple[int, str]:
        async with self._client.stream(
            "POST", hook.url, json=body, timeout=hook.timeout_s, follow_redirects=False
        ) as response:
            answer = b""
            async for chunk in response.aiter_bytes():
                answer += chunk
                if len(answer) >= MAX_ANSWER_BYTES:
                    break
        text = answer[:MAX_ANSWER_BYTES].decode("utf-8", "replace").strip()
        return response.status_code, " ".join(text.split())[:200]


__all__ = ["MAX_ANSWER_BYTES", "HookRunner", "payload"]
