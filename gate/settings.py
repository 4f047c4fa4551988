"""Gate settings: ``GATE_<NAME>`` environment variables, plus an optional analysis YAML."""

from __future__ import annotations

import json
import re
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
import yaml
from pydantic import Field, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

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
    prometheus_queries: dict[str, str] = Field(
        default_factory=dict, examples=[{"p99": "histogram_quantile(0.99, ...)"}]
    )
    """PromQL overrides by name (requests, server_errors, p99, classes), JSON."""
    analysis_file: Path | None = None
    """YAML file with AnalysisSpec defaults (steps, intervals, thresholds, limits)."""
    webhook_urls: list[str] = Field(
        default_factory=list, examples=[["https://hooks.slack.com/services/..."]]
    )
    """Slack-compatible webhook URLs, JSON list."""
    webhook_interval_s: float = Field(1.0, gt=0)
    """How often the webhook outbox is drained."""
    webhook_max_passes: int = Field(5, ge=1)
    """Delivery passes (each with 3 quick retries) before an event is given up."""
    model_name: str = "iris"
    """Model whose stable the gate brings up at start (local backend)."""
    stable_model_dir: Path | None = None
    """Local backend: artifact directory of the initial stable, if none is recorded yet."""
    stable_model_dirs: list[Path] = Field(
        default_factory=list, max_length=100, examples=[["/models/iris/1", "/models/wine/3"]]
    )
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
    holdout_allowed_prefixes: list[str] = Field(
        default_factory=list, examples=[["s3://holdouts/iris/"]]
    )
    """Where a candidate's holdout_uri may point besides the artifact's own
    ``holdout.csv``: path or URL prefixes, JSON list. Empty: the artifact's own only."""
    holdout_max_bytes: int = Field(16 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    """Largest held-out set the gate reads (a path, an http(s) URL or an s3:// object);
    a larger one fails the accuracy gate, naming the size, before it is read whole."""
    s3_endpoint_url: str = Field(
        "",
        pattern=r"^(https?://[^\s/?#@]+/?)?$",
        examples=["http://minio-service.kubeflow:9000"],
    )
    """S3 API endpoint for s3:// held-out sets, e.g. a MinIO service's
    http://minio-service.kubeflow:9000; empty: AWS's own. Credentials come the standard
    AWS way (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile or role); needs
    the ``s3`` extra (boto3)."""
    s3_region: str = Field("us-east-1", pattern=r"^[a-z0-9-]{1,32}$", examples=["eu-west-1"])
    """Region named in the S3 requests' signatures (MinIO accepts us-east-1)."""
    s3_timeout_s: float = Field(10.0, gt=0, le=300)
    """Connect and read timeout of each S3 request (two attempts at most)."""
    kserve_storage_prefixes: list[str] = Field(
        default_factory=list, examples=[["gs://models/iris/"]]
    )
    """KServe backend: storage URI prefixes a candidate's artifact_uri must start with,
    JSON list (e.g. ["gs://models/iris/"]); required by the kserve backend."""
    hook_allowed_prefixes: list[str] = Field(
        default_factory=list, examples=[["http://flagger-loadtester.test/"]]
    )
    """URL prefixes a rollout's gating hooks may call (JSON list, e.g.
    ["http://flagger-loadtester.test/"]). Empty: only the gate's own 'approval' hook."""
    run_dir: Path = Path(".irisgate/predictors")
    """Local backend: where predictor logs go."""
    canary_args: str = ""
    """Local backend: extra predictor flags for every candidate, e.g. fault injection."""
    canary_args_by_model: dict[str, str] = Field(
        default_factory=dict, examples=[{"iris": "--fault_error_rate 0.2"}]
    )
    """Local backend: extra candidate flags per model (replacing canary_args), JSON."""
    kserve_namespace: str = "default"
    """KServe backend: namespace of the InferenceServices."""
    kserve_services: dict[str, list[str]] = Field(
        default_factory=dict, examples=[{"iris": ["iris-rest", "iris-grpc"]}]
    )
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


class SettingsProblem(ValueError):
    """A ``GATE_*`` variable that is missing or malformed, said in one line: the variable's
    name and the form it takes."""


def load_settings() -> GateSettings:
    """The settings from the environment, or a :class:`SettingsProblem`.

    pydantic reports a bad value as a multi-line ValidationError, and pydantic-settings a
    list or mapping that is not JSON as a SettingsError whose traceback never says which
    form it wanted: someone starting the gate needs the variable and its expected form,
    whichever field it is, so both become one line built from the field's type and bounds.
    """
    try:
        return GateSettings()
    except SettingsError as exc:
        # pydantic-settings names the field only in its message: 'error parsing value
        # for field "webhook_urls" from source "EnvSettingsSource"'
        match = re.search(r'field "(\w+)"', str(exc))
        if match is None or match[1] not in GateSettings.model_fields:
            raise SettingsProblem(str(exc)) from exc
        name = match[1]
        raise SettingsProblem(
            f"{env_name(name)}: expected {expected_form(GateSettings.model_fields[name])}"
        ) from exc
    except ValidationError as exc:
        raise SettingsProblem(_describe_error(exc)) from exc


def env_name(field_name: str) -> str:
    """The environment variable that sets ``field_name``."""
    return f"{GateSettings.model_config.get('env_prefix', '')}{field_name.upper()}"


def _describe_error(exc: ValidationError) -> str:
    errors = exc.errors()
    error = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    loc = error["loc"]
    if not loc:
        return f"{error['msg']}{more}"
    name = str(loc[0])
    field = GateSettings.model_fields.get(name)
    if field is None:
        return f"{env_name(name)}: {error['msg']}{more}"
    if error["type"] == "missing":
        return f"{env_name(name)}: not set; expected {expected_form(field)}{more}"
    # The value is echoed only when it is the variable's whole value and not a secret.
    secret = SecretStr in _plain_types(field.annotation)
    given = "" if secret or len(loc) > 1 else f", got {error['input']!r}"
    return f"{env_name(name)}: expected {expected_form(field)}{given}{more}"


def expected_form(field: FieldInfo) -> str:
    """What a field's variable must hold, from its type, bounds and examples, e.g.
    ``an integer from 0 to 65535`` or ``a JSON list of strings, e.g. ["https://..."]``."""
    annotation = _without_none(field.annotation)
    form = _type_phrase(annotation) + _bounds_phrase(annotation, field.metadata)
    if get_origin(annotation) in (list, dict):
        example = field.examples[0] if field.examples else _example(annotation)
        form += f", e.g. {json.dumps(example)}"
    elif annotation is str and field.examples:  # a string of a given form: show one
        form += f", e.g. {field.examples[0]}"
    return form


def _plain_types(annotation: Any) -> tuple[Any, ...]:
    if get_origin(annotation) in (Union, types.UnionType):
        return get_args(annotation)
    return (annotation,)


def _without_none(annotation: Any) -> Any:
    kept = [arg for arg in _plain_types(annotation) if arg is not type(None)]
    return kept[0] if len(kept) == 1 else annotation


_NOUNS: dict[Any, tuple[str, str]] = {
    bool: ("true or false", "booleans"),
    int: ("an integer", "integers"),
    float: ("a number", "numbers"),
    str: ("a string", "strings"),
    SecretStr: ("a string", "strings"),
    Path: ("a path", "paths"),
}


def _type_phrase(annotation: Any, plural: bool = False) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is list and args:
        return f"{'JSON lists' if plural else 'a JSON list'} of {_type_phrase(args[0], True)}"
    if origin is dict and len(args) == 2:
        values = _type_phrase(args[1], True)
        return f"{'JSON objects' if plural else 'a JSON object'} of names to {values}"
    if origin is Literal:
        return "one of " + ", ".join(str(arg) for arg in args)
    singular, many = _NOUNS.get(annotation, ("a value", "values"))
    return many if plural else singular


def _bounds_phrase(annotation: Any, metadata: list[Any]) -> str:
    numbers = {
        type(item): value
        for item in metadata
        for attr in ("ge", "gt", "le", "lt")
        if (value := getattr(item, attr, None)) is not None
    }
    ge, gt = numbers.get(annotated_types.Ge), numbers.get(annotated_types.Gt)
    le, lt = numbers.get(annotated_types.Le), numbers.get(annotated_types.Lt)
    if ge is not None and le is not None:
        return f" from {ge} to {le}"
    words = [
        f"{word} {value}"
        for word, value in (
            ("at least", ge),
            ("greater than", gt),
            ("at most", le),
            ("less than", lt),
        )
        if value is not None
    ]
    unit = "items" if get_origin(annotation) in (list, dict) else "characters"
    linker = "with" if unit == "items" else "of"
    for item in metadata:
        if isinstance(item, annotated_types.MinLen):
            words.append(f"{linker} at least {item.min_length} {unit}")
        elif isinstance(item, annotated_types.MaxLen):
            words.append(f"{linker} at most {item.max_length} {unit}")
    return (" " + " and ".join(words)) if words else ""


def _example(annotation: Any) -> Any:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is list and args:
        return [_example(args[0])]
    if origin is dict and len(args) == 2:
        return {"name": _example(args[1])}
    return {int: 1, float: 1.0, bool: True, Path: "/path/..."}.get(annotation, "...")
