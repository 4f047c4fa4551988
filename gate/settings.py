"""Gate settings: ``GATE_<NAME>`` environment variables, plus an optional analysis YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from gate.core.spec import AnalysisSpec


class GateSettings(BaseSettings):
    """Built in ``main()`` or the app factory; never at import time."""

    model_config = SettingsConfigDict(
        env_prefix="GATE_", extra="forbid", use_attribute_docstrings=True
    )

    host: str = "127.0.0.1"
    """Address the API binds to; containers pass 0.0.0.0."""
    port: int = Field(8090, ge=0, le=65535)
    """API port."""
    api_token: SecretStr = Field(min_length=16)
    """Bearer token for mutating endpoints (create, pause, resume, promote, abort)."""
    db_path: Path = Path(".irisgate/gate.db")
    """SQLite file holding rollouts, decisions and the webhook outbox."""
    events_token: SecretStr | None = Field(None, min_length=16)
    """Token for ``POST /v1/events`` (payload events from the router or KServe's logger):
    a bearer token, or the last path segment for senders that cannot add headers. Unset:
    ingestion is off (503), and so are shadow phases' pairs."""
    feedback_token: SecretStr | None = Field(None, min_length=16)
    """A token for ``POST /v1/feedback`` only (the API token works too): what a label
    source holds, so it can add labels but never steer a rollout."""
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=64 * 1024, le=256 * 1024 * 1024)
    """Largest request body the API reads (413 beyond it, before it is parsed); payload
    events have their own bound (16 MiB)."""
    payload_retention_s: float = Field(86_400.0, gt=0, le=90 * 86_400)
    """How long logged payloads and shadow pairs are kept."""
    payload_max_rows: int = Field(200_000, ge=1_000, le=100_000_000)
    """At most this many logged payloads are kept (the oldest go first)."""
    tick_interval_s: float = Field(2.0, gt=0)
    """How often every active rollout is reconsidered."""
    traffic_backend: str = "local"
    """local (predictor processes + gate.router) or kserve (InferenceService canary)."""
    metrics_provider: str = "scrape"
    """scrape (predictors' /metrics) or prometheus (PromQL)."""
    prometheus_url: str = ""
    """Prometheus base URL for the prometheus provider."""
    prometheus_queries: dict[str, str] = Field(default_factory=dict)
    """PromQL overrides by name (requests, server_errors, p99, classes), JSON."""
    analysis_file: Path | None = None
    """YAML file with AnalysisSpec defaults (steps, intervals, thresholds, limits)."""
    webhook_urls: list[str] = Field(default_factory=list)
    """Slack-compatible webhook URLs, JSON list."""
    webhook_interval_s: float = Field(1.0, gt=0)
    """How often the webhook outbox is drained."""
    webhook_max_passes: int = Field(5, ge=1)
    """Delivery passes (each with 3 quick retries) before an event is given up."""
    model_name: str = "iris"
    """Model whose stable the gate brings up at start (local backend)."""
    stable_model_dir: Path | None = None
    """Local backend: artifact directory of the initial stable, if none is recorded yet."""
    stable_model_dirs: list[Path] = Field(default_factory=list, max_length=100)
    """Local backend: more initial stables (one per model, each dir's model.json names its
    model), JSON list."""
    candidate_timeout_s: float = Field(120.0, gt=0, le=86_400)
    """How long a started candidate may take to become ready before the accuracy gate
    fails it."""
    crash_after: str = ""
    """Testing only: SIGKILL the gate right after persisting the n-th decision with this
    action, as ``ACTION[:N]`` (e.g. ``step:2``). Empty: never."""
    router_admin_url: str = "http://127.0.0.1:8002"
    """Local backend: the router's admin API base URL (its own loopback port)."""
    router_token: SecretStr | None = None
    """Local backend: bearer token of the router's admin API (the router's
    ROUTER_ADMIN_TOKEN); required by the local backend."""
    registry_dir: Path | None = None
    """Local backend: the model registry; candidates' artifact_uri must resolve inside
    it (no symlink escape). Default: the registry that holds GATE_STABLE_MODEL_DIR
    (``<registry>/<model>/<version>``)."""
    holdout_allowed_prefixes: list[str] = Field(default_factory=list)
    """Where a candidate's holdout_uri may point besides the artifact's own
    ``holdout.csv``: path or URL prefixes, JSON list. Empty: the artifact's own only."""
    kserve_storage_prefixes: list[str] = Field(default_factory=list)
    """KServe backend: storage URI prefixes a candidate's artifact_uri must start with,
    JSON list (e.g. ["gs://models/iris/"]); required by the kserve backend."""
    hook_allowed_prefixes: list[str] = Field(default_factory=list)
    """URL prefixes a rollout's gating hooks may call (JSON list, e.g.
    ["http://flagger-loadtester.test/"]). Empty: only the gate's own 'approval' hook."""
    run_dir: Path = Path(".irisgate/predictors")
    """Local backend: where predictor logs go."""
    canary_args: str = ""
    """Local backend: extra predictor flags for every candidate, e.g. fault injection."""
    canary_args_by_model: dict[str, str] = Field(default_factory=dict)
    """Local backend: extra candidate flags per model (replacing canary_args), JSON."""
    kserve_namespace: str = "default"
    """KServe backend: namespace of the InferenceServices."""
    kserve_services: dict[str, list[str]] = Field(default_factory=dict)
    """KServe backend: InferenceService names per model, JSON, e.g.
    {"iris": ["iris-rest", "iris-grpc"]} (serverless allows one protocol per service)."""
    kserve_gate_url: str = ""
    """KServe backend: the gate's URL as the cluster sees it (e.g.
    http://irisgate-gate.irisgate.svc.cluster.local:8090); with GATE_EVENTS_TOKEN set, the
    gate points the REST InferenceService's payload logger at it."""
    kserve_api_url: str = ""
    """KServe backend: Kubernetes API URL; empty means in-cluster or kubeconfig."""

    def analysis_defaults(self) -> AnalysisSpec:
        if self.analysis_file is None:
            return AnalysisSpec()
        document: Any = yaml.safe_load(self.analysis_file.read_text()) or {}
        if not isinstance(document, dict):
            raise ValueError(f"{self.analysis_file}: expected a mapping of analysis settings")
        return AnalysisSpec.model_validate(document)
