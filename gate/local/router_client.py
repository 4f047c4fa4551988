"""The local Router: drives ``python -m gate.local.router`` through its admin API.

The admin API listens on its own loopback port and wants the router's bearer token
(``GATE_ROUTER_TOKEN`` here, ``ROUTER_ADMIN_TOKEN`` there). Routes are per model:
``PUT /router/routes/{model}`` with the stable and canary endpoints, the weight, and
whether the router mirrors the model's live requests to the gate as payload events.
"""

from __future__ import annotations

from typing import Any

import httpx

from gate.core.state import RolloutState
from gate.store import SQLiteStore, Stable
from gate.traffic.base import Router, TrafficError


class LocalRouter(Router):
    def __init__(self, admin_url: str, token: str, store: SQLiteStore) -> None:
        self.admin_url = admin_url.rstrip("/")
        self.store = store
        self._client = httpx.AsyncClient(timeout=5.0, headers={"Authorization": f"Bearer {token}"})
        self._mirror: dict[str, bool] = {}
        """Per model: should the router send payload events (every PUT carries it)."""

    async def _routes(self, model: str) -> dict[str, Any]:
        url = f"{self.admin_url}/router/routes/{model}"
        try:
            response = await self._client.get(url)
        except httpx.HTTPError as exc:
            raise TrafficError(f"router unreachable at {self.admin_url}: {exc!r}") from exc
        if response.status_code == 404:
            return {"stable": None, "canary": None, "canary_weight": 0}
        if response.status_code != 200:
            raise TrafficError(f"router answered {response.status_code}: {response.text[:200]}")
        routes: dict[str, Any] = response.json()
        return routes

    async def _put(
        self,
        model: str,
        stable: dict[str, Any] | None,
        canary: dict[str, Any] | None,
        weight: int,
    ) -> None:
        def spec(endpoint: dict[str, Any] | None) -> dict[str, Any] | None:
            if endpoint is None:
                return None
            return {
                "http": endpoint["http"],
                "grpc": endpoint["grpc"],
                # (an endpoint recorded by an older gate has none: one connection per client)
                "grpc_processes": endpoint.get("grpc_processes", []),
            }

        body = {
            "stable": spec(stable),
            "canary": spec(canary),
            "canary_weight": weight,
            "mirror": self._mirror.get(model, False),
        }
        try:
            response = await self._client.put(f"{self.admin_url}/router/routes/{model}", json=body)
        except httpx.HTTPError as exc:
            raise TrafficError(f"router unreachable at {self.admin_url}: {exc!r}") from exc
        if response.status_code != 200:
            raise TrafficError(f"router refused {body}: {response.text[:300]}")

    def _stable_endpoint(self, model: str) -> dict[str, Any]:
        stable = self.store.stable(model)
        if stable is None or stable.endpoint is None:
            raise TrafficError(f"no stable predictor known for model {model}")
        return stable.endpoint

    async def ensure_stable_route(self, stable: Stable) -> None:
        if stable.endpoint is None:
            raise TrafficError(f"stable of {stable.model} has no endpoint")
        routes = await self._routes(stable.model)
        if (routes.get("stable") or {}).get("http") == stable.endpoint["http"]:
            return
        canary = routes.get("canary")
        await self._put(stable.model, stable.endpoint, canary, int(routes.get("canary_weight", 0)))

    async def get_weight(self, state: RolloutState) -> int:
        routes = await self._routes(state.model)
        canary = routes.get("canary") or {}
        ours = state.backend_state.get("canary") or {}
        if not ours or canary.get("http") != ours.get("http"):
            return 0
        return int(routes.get("canary_weight", 0))

    async def set_weight(self, state: RolloutState, weight: int) -> None:
        canary = state.backend_state.get("canary")
        if canary is None:
            raise TrafficError("canary predictor unknown; cannot route")
        await self._put(state.model, self._stable_endpoint(state.model), canary, weight)

    async def promote(self, state: RolloutState) -> None:
        canary = state.backend_state.get("canary")
        if canary is None:
            raise TrafficError("no canary to promote")
        await self._put(state.model, canary, None, 0)

    async def rollback(self, state: RolloutState) -> None:
        routes = await self._routes(state.model)
        if routes.get("canary") is None:
            return
        await self._put(state.model, self._stable_endpoint(state.model), None, 0)

    async def restore(self, state: RolloutState, previous: Stable) -> None:
        if previous.endpoint is None:
            raise TrafficError(f"previous stable v{previous.version} has no endpoint")
        await self._put(state.model, previous.endpoint, None, 0)

    async def set_mirror(self, model: str, on: bool) -> None:
        self._mirror[model] = on
        routes = await self._routes(model)
        if bool(routes.get("mirror", False)) == on or routes.get("stable") is None:
            return
        weight = int(routes.get("canary_weight", 0))
        await self._put(model, routes.get("stable"), routes.get("canary"), weight)

    async def aclose(self) -> None:
        await self._client.aclose()
