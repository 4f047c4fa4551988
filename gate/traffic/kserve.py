"""The ``kserve`` traffic backend: KServe's own canary mechanism, driven with the
Kubernetes client.

In serverless (Knative) mode a predictor declares one container port, so REST and gRPC
are two InferenceServices of the same image and model; the gate drives all services of a
model in lock-step. A rollout:

- start: each service's predictor container gets the candidate's ``STORAGE_URI`` and
  ``canaryTrafficPercent: 0``; KServe creates a new revision that receives no traffic yet.
  With ``serving.kserve.io/enable-tag-routing: "true"`` the new revision is reachable by
  its ``latest`` tag URL, which the accuracy gate's replay uses.
- steps: ``canaryTrafficPercent`` on every service.
- promote: the field is removed (the latest revision takes all traffic).
- rollback: ``canaryTrafficPercent: 0`` (all traffic back to the previous revision);
  after a promotion (the post-promotion watch) the same patch pins the previous
  rolled-out revision, as KServe's canary guide's "rollback and pin" does. The watch has
  no pairs here (the previous revision has no URL of its own after a promotion).
- the actual split is read back from ``status.components.predictor.traffic``.
- payload events: the REST service (the first of a model's) gets KServe's logger,
  ``spec.predictor.logger: {mode: all, url: <gate>/v1/events/<events token>}``, so every
  request and answer reaches the gate for the shadow phase and delayed labels. The gate
  sets it when it brings up the stable, never during a rollout (a changed predictor spec
  is a new revision), and the URL carries the events token, so it lives in no manifest.

Not yet run against a live cluster; tested against a stand-in API server that validates
every patch with KServe's InferenceService schema.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from gate.core.state import RolloutState
from gate.providers.base import Targets
from gate.store import SQLiteStore, Stable
from gate.traffic.base import Readiness, TrafficBackend, TrafficError

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
VERSION_ANNOTATION = "irisgate.io/model-version"
STORAGE_ENV = "STORAGE_URI"
DIGEST_ENV = "PREDICTOR_MODEL_DIGEST"


class KServeTrafficBackend(TrafficBackend):
    """One Kubernetes API, both seams: KServe splits traffic and deploys revisions."""

    name = "kserve"

    def __init__(
        self,
        api: Any,
        namespace: str,
        services: dict[str, list[str]],
        store: SQLiteStore,
        logger_url: str | None = None,
    ) -> None:
        self.api = api  # kubernetes.client.CustomObjectsApi
        self.namespace = namespace
        self.services = services
        self.store = store
        self.logger_url = logger_url
        """Where KServe's logger sends payload events (with the key), or None: not set."""

    @classmethod
    def from_settings(cls, settings: Any, store: SQLiteStore) -> KServeTrafficBackend:
        from kubernetes import client, config

        if not settings.kserve_services:
            raise ValueError(
                "the kserve backend needs GATE_KSERVE_SERVICES, e.g. "
                '{"iris": ["iris-rest", "iris-grpc"]}'
            )
        if settings.kserve_api_url:
            configuration = client.Configuration(host=settings.kserve_api_url)
            api_client = client.ApiClient(configuration)
        else:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            api_client = client.ApiClient()
        logger_url = None
        if settings.kserve_gate_url and settings.events_token is not None:
            key = settings.events_token.get_secret_value()
            logger_url = f"{settings.kserve_gate_url.rstrip('/')}/v1/events/{key}"
        return cls(
            client.CustomObjectsApi(api_client),
            settings.kserve_namespace,
            settings.kserve_services,
            store,
            logger_url,
        )

    # --- Kubernetes calls (sync client, run in a thread) -----------------------------------
    def _names(self, model: str) -> list[str]:
        names = self.services.get(model)
        if not names:
            raise TrafficError(f"no InferenceService configured for model {model}")
        return names

    async def _get(self, name: str) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            found: dict[str, Any] = await asyncio.to_thread(
                self.api.get_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL, name
            )
        except ApiException as exc:
            raise TrafficError(
                f"cannot read InferenceService {self.namespace}/{name}: {exc.status} {exc.reason}"
            ) from exc
        return found

    async def _patch(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            patched: dict[str, Any] = await asyncio.to_thread(
                self.api.patch_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                name,
                patch,
            )
        except ApiException as exc:
            raise TrafficError(
                f"patch of InferenceService {self.namespace}/{name} refused: "
                f"{exc.status} {exc.body}"
            ) from exc
        return patched

    async def _patch_all(self, model: str, patch: dict[str, Any]) -> None:
        for name in self._names(model):
            await self._patch(name, patch)

    # --- interface ---------------------------------------------------------------------------
    async def ensure_stable(self, model: str) -> Stable | None:
        found = None
        for index, name in enumerate(self._names(model)):
            service = await self._get(name)
            if index == 0:
                await self._ensure_logger(name, service)
            if self.store.stable(model) is None and found is None:
                version = (service["metadata"].get("annotations") or {}).get(VERSION_ANNOTATION)
                if version:
                    found = Stable(
                        model=model, version=version, artifact_uri=_storage_uri(service) or ""
                    )
                    self.store.set_stable(found)
        return found or self.store.stable(model)

    async def _ensure_logger(self, name: str, service: dict[str, Any]) -> None:
        """KServe's payload logger on the REST service, pointed at the gate; only while no
        rollout moves its traffic (the patch makes a new revision of the same model)."""
        if self.logger_url is None:
            return
        predictor = service.get("spec", {}).get("predictor", {})
        wanted = {"mode": "all", "url": self.logger_url}
        current = predictor.get("logger") or {}
        if {k: current.get(k) for k in wanted} == wanted:
            return
        if predictor.get("canaryTrafficPercent") is not None:
            return  # a rollout is under way: the next start sets it
        await self._patch(name, {"spec": {"predictor": {"logger": wanted}}})

    async def ensure_stable_route(self, stable: Stable) -> None:
        """KServe routes to the previous revision by itself."""

    def plan_candidate(self, state: RolloutState) -> dict[str, Any]:
        return {"services": self._names(state.model)}

    async def start_candidate(self, state: RolloutState) -> None:
        for name in self._names(state.model):
            service = await self._get(name)
            if _storage_uri(service) != state.candidate.artifact_uri:
                await self._patch(name, _candidate_patch(service, state))

    async def candidate_ready(self, state: RolloutState) -> Readiness:
        """Ready once every service's newest revision is ready with a 'latest' tag URL."""
        urls: dict[str, str] = {}
        prev_urls: dict[str, str] = {}
        for name in self._names(state.model):
            service = await self._get(name)
            if _storage_uri(service) != state.candidate.artifact_uri:
                await self.start_candidate(state)  # a restarted gate: patch it again
                return Readiness(False, f"InferenceService {name}: candidate not deployed yet")
            predictor = _predictor_status(service)
            latest = predictor.get("latestCreatedRevision")
            if not latest or latest != predictor.get("latestReadyRevision"):
                return Readiness(False, f"InferenceService {name}: revision {latest} not ready")
            url = _tagged_url(predictor, "latest")
            if url is None:
                return Readiness(
                    False,
                    f"InferenceService {name}: no 'latest' tag URL (is tag routing enabled?)",
                )
            urls[name] = url
            previous = _tagged_url(predictor, "prev")
            if previous is not None:
                prev_urls[name] = previous
        return Readiness(True, facts={"latest_urls": urls, "prev_urls": prev_urls})

    def candidate_url(self, state: RolloutState) -> str:
        urls: dict[str, str] = state.backend_state.get("latest_urls", {})
        for name in self._names(state.model):  # the first service is the REST one
            if name in urls:
                return urls[name]
        raise TrafficError("candidate URL unknown")

    def stable_url(self, state: RolloutState) -> str | None:
        """The previous revision's 'prev' tag URL, when KServe's tag routing gives one."""
        urls: dict[str, str] = state.backend_state.get("prev_urls", {})
        return next((urls[n] for n in self._names(state.model) if n in urls), None)

    async def get_weight(self, state: RolloutState) -> int:
        weights = set()
        for name in self._names(state.model):
            weights.add(_latest_percent(_predictor_status(await self._get(name))))
        if len(weights) != 1:
            return -1  # services disagree: the controller converges them
        return weights.pop()

    async def set_weight(self, state: RolloutState, weight: int) -> None:
        await self._patch_all(
            state.model, {"spec": {"predictor": {"canaryTrafficPercent": weight}}}
        )

    async def promote(self, state: RolloutState) -> None:
        await self._patch_all(
            state.model,
            {
                "metadata": {"annotations": {VERSION_ANNOTATION: state.candidate.version}},
                "spec": {"predictor": {"canaryTrafficPercent": None}},
            },
        )

    def promoted_stable(self, state: RolloutState) -> Stable:
        return Stable(
            model=state.model,
            version=state.candidate.version,
            artifact_uri=state.candidate.artifact_uri,
            digest=state.candidate.digest,
        )

    async def rollback(self, state: RolloutState) -> None:
        await self._patch_all(state.model, {"spec": {"predictor": {"canaryTrafficPercent": 0}}})

    async def restore(self, state: RolloutState, previous: Stable) -> None:
        """KServe's "rollback and pin the previous model": ``canaryTrafficPercent: 0`` on
        the promoted revision sends all traffic to the previously rolled-out one."""
        await self._patch_all(
            state.model,
            {
                "metadata": {"annotations": {VERSION_ANNOTATION: previous.version}},
                "spec": {"predictor": {"canaryTrafficPercent": 0}},
            },
        )

    async def retire(self) -> list[str]:
        """KServe keeps revisions itself; a rolled-back one takes no traffic."""
        return []

    def metrics_targets(self, state: RolloutState) -> Targets:
        stable = self.store.stable(state.model)
        return Targets(
            model=state.model,
            stable_version=stable.version if stable else "",
            canary_version=state.candidate.version,
        )


def _tagged_url(predictor: dict[str, Any], tag: str) -> str | None:
    """The URL of the traffic entry with ``tag`` (KServe's tag routing: latest, prev)."""
    return next(
        (
            str(entry["url"])
            for entry in predictor.get("traffic") or []
            if entry.get("tag") == tag and entry.get("url")
        ),
        None,
    )


def _container(service: dict[str, Any]) -> dict[str, Any]:
    containers = service.get("spec", {}).get("predictor", {}).get("containers") or []
    if not containers:
        raise TrafficError(
            f"InferenceService {service['metadata']['name']} has no predictor "
            "container (irisgate runs as a custom container)"
        )
    first: dict[str, Any] = containers[0]
    return first


def _storage_uri(service: dict[str, Any]) -> str | None:
    for variable in _container(service).get("env") or []:
        if variable.get("name") == STORAGE_ENV:
            return str(variable.get("value"))
    return None


def _candidate_patch(service: dict[str, Any], state: RolloutState) -> dict[str, Any]:
    """Merge patch: containers is a list, so it is sent whole with the env changed."""
    containers = copy.deepcopy(service["spec"]["predictor"]["containers"])
    ours = {STORAGE_ENV, DIGEST_ENV}
    env = [v for v in containers[0].get("env") or [] if v.get("name") not in ours]
    env.append({"name": STORAGE_ENV, "value": state.candidate.artifact_uri})
    if state.candidate.digest:  # the predictor refuses any other model file
        env.append({"name": DIGEST_ENV, "value": state.candidate.digest})
    containers[0]["env"] = env
    return {"spec": {"predictor": {"canaryTrafficPercent": 0, "containers": containers}}}


def _predictor_status(service: dict[str, Any]) -> dict[str, Any]:
    status: dict[str, Any] = (
        (service.get("status") or {}).get("components", {}).get("predictor", {})
    )
    return status


def _latest_percent(predictor: dict[str, Any]) -> int:
    traffic = predictor.get("traffic") or []
    return sum(int(t.get("percent") or 0) for t in traffic if t.get("latestRevision"))
