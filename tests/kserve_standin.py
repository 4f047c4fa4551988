"""A stand-in Kubernetes API server for InferenceServices.

It stores objects, applies JSON merge patches, and rejects any result that KServe's
InferenceService schema (../shared/schemas/) would reject, strictly: unknown fields are
errors, as with a server-side field validation of ``Strict``. It then plays KServe's
controller just enough: a changed predictor spec makes a new revision, and the traffic
split follows ``canaryTrafficPercent``.
"""

from __future__ import annotations

import copy
import functools
import os
import threading
import time
from pathlib import Path
from typing import Any

import jsonschema
import uvicorn
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.helpers import REPO_ROOT, free_port

SCHEMA_ENV = "IRISGATE_KSERVE_CRD"
DEFAULT_SCHEMA = (
    REPO_ROOT.parent / "shared" / "schemas" / "serving.kserve.io_inferenceservices.yaml"
)
PREFIX = "/apis/serving.kserve.io/v1beta1/namespaces/{namespace}/inferenceservices/{name}"


def crd_path() -> Path | None:
    path = Path(os.environ.get(SCHEMA_ENV, DEFAULT_SCHEMA))
    return path if path.is_file() else None


def strict(schema: Any) -> Any:
    """Unknown fields become errors, except where the CRD preserves unknown fields."""
    if isinstance(schema, dict):
        result = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in result
            and "additionalProperties" not in result
            and not result.get("x-kubernetes-preserve-unknown-fields")
        ):
            result["additionalProperties"] = False
        return result
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@functools.cache
def load_validator(path: Path) -> jsonschema.protocols.Validator:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRD is large
    document = yaml.load(path.read_text(), Loader=loader)
    version = next(v for v in document["spec"]["versions"] if v["name"] == "v1beta1")
    schema = strict(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta is the API server's
    return jsonschema.Draft7Validator(schema)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def inference_service(name: str, storage_uri: str, version: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "namespace": "models",
            "generation": 1,
            "annotations": {
                "serving.kserve.io/enable-tag-routing": "true",
                "irisgate.io/model-version": version,
            },
        },
        "spec": {
            "predictor": {
                "containers": [
                    {
                        "name": "kserve-container",
                        "image": "irisgate-predictor:0.1.0",
                        "args": ["--model_name", "iris", "--model_dir", "/mnt/models"],
                        "env": [{"name": "STORAGE_URI", "value": storage_uri}],
                        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                    }
                ]
            }
        },
    }


class StandIn:
    def __init__(self, schema_path: Path, latest_url: str) -> None:
        self.validator = load_validator(schema_path)
        self.latest_url = latest_url
        self.objects: dict[str, dict[str, Any]] = {}
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.rejected: list[str] = []
        self.revisions = 0
        self.app = FastAPI()
        self.app.add_api_route(PREFIX, self.get, methods=["GET"])
        self.app.add_api_route(PREFIX, self.patch, methods=["PATCH"])
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def add(self, service: dict[str, Any]) -> None:
        self._validate(service)
        self.revisions += 1
        revision = f"{service['metadata']['name']}-predictor-{self.revisions:05d}"
        service["status"] = {
            "components": {
                "predictor": {
                    "latestCreatedRevision": revision,
                    "latestReadyRevision": revision,
                    "latestRolledoutRevision": revision,
                    "traffic": [{"revisionName": revision, "latestRevision": True, "percent": 100}],
                }
            }
        }
        self.objects[service["metadata"]["name"]] = service

    def _validate(self, service: dict[str, Any]) -> None:
        errors = sorted(self.validator.iter_errors(service), key=lambda e: list(e.path))
        if errors:
            first = errors[0]
            where = ".".join(str(p) for p in first.path)
            raise ValueError(f"{where}: {first.message}")

    async def get(self, namespace: str, name: str) -> JSONResponse:
        if name not in self.objects:
            return _status(404, f'inferenceservices "{name}" not found')
        return JSONResponse(self.objects[name])

    async def patch(self, namespace: str, name: str, request: Request) -> JSONResponse:
        if name not in self.objects:
            return _status(404, f'inferenceservices "{name}" not found')
        if request.headers.get("content-type") != "application/merge-patch+json":
            return _status(415, "only merge patches are supported here")
        patch = await request.json()
        current = self.objects[name]
        updated = merge_patch({k: v for k, v in current.items() if k != "status"}, patch)
        try:
            self._validate(updated)
        except ValueError as exc:
            self.rejected.append(str(exc))
            return _status(422, f'InferenceService.serving.kserve.io "{name}" is invalid: {exc}')
        self.patches.append((name, patch))
        updated["status"] = self._reconcile(current, updated)
        self.objects[name] = updated
        return JSONResponse(updated)

    def _reconcile(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        """KServe's controller, in miniature: revisions and the traffic split."""
        status: dict[str, Any] = copy.deepcopy(before["status"])
        predictor = status["components"]["predictor"]
        spec_before = {
            k: v for k, v in before["spec"]["predictor"].items() if k != "canaryTrafficPercent"
        }
        spec_after = {
            k: v for k, v in after["spec"]["predictor"].items() if k != "canaryTrafficPercent"
        }
        if spec_before != spec_after:
            self.revisions += 1
            revision = f"{after['metadata']['name']}-predictor-{self.revisions:05d}"
            predictor["latestCreatedRevision"] = predictor["latestReadyRevision"] = revision
        latest = predictor["latestCreatedRevision"]
        rolled = predictor["latestRolledoutRevision"]
        percent = after["spec"]["predictor"].get("canaryTrafficPercent")
        if latest == rolled or percent is None:
            predictor["latestRolledoutRevision"] = latest
            predictor["traffic"] = [
                {
                    "revisionName": latest,
                    "latestRevision": True,
                    "percent": 100,
                    "tag": "latest",
                    "url": self.latest_url,
                }
            ]
        else:
            predictor["traffic"] = [
                {
                    "revisionName": latest,
                    "latestRevision": True,
                    "percent": percent,
                    "tag": "latest",
                    "url": self.latest_url,
                },
                {
                    "revisionName": rolled,
                    "latestRevision": False,
                    "percent": 100 - percent,
                    "tag": "prev",
                },
            ]
        return status

    def serve(self) -> threading.Thread:
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        thread = threading.Thread(target=self.server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        return thread

    def stop(self) -> None:
        self.server.should_exit = True


def _status(code: int, message: str) -> JSONResponse:
    return JSONResponse(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": message,
            "code": code,
        },
        status_code=code,
    )
