"""Cluster mode's hand-off, end to end on loopback: the deploy step, given its inputs as
KFP gives them on a cluster (``minio://`` URIs in KFP's artifact store, downloaded copies
in the pod), hands a real gate process (kserve backend) the ``s3://`` URIs and the digest;
the gate points the InferenceService at that URI (a stand-in API server validating KServe's
schema), reads the held-out split from the object store (moto's S3 server, credentials
checked) and replays it against a real predictor serving the same artifact.

What only a cluster has is not here: KFP's launcher uploading and downloading the
artifacts (the test uploads what train and preprocess wrote, at the keys KFP would use)
and KServe's storage initializer (the predictor reads the same files locally).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from kfp import dsl

from pipeline.components import deploy
from pipeline.steps.common import GATE_TOKEN_ENV, TrainParams
from pipeline.steps.deploy import HandoffError, hand_to_gate, run_version
from pipeline.steps.evaluate import evaluate_model
from pipeline.steps.preprocess import load_dataset, split_dataset
from pipeline.steps.train import train_model
from predictor.artifact import read_metadata, registry_versions
from tests.helpers import Predictor, free_port, run_predictor, start_process, wait_until
from tests.kserve_standin import StandIn, crd_path, inference_service
from tests.s3_server import S3Server, s3_server

pytestmark = pytest.mark.integration

TOKEN = "object-store-token-0123456789"
RUN_ID = "3f0c2a1e-7d4b-4c1a-9e2f-5b6a7c8d9e0f"
BUCKET = "mlpipeline"
PIPELINE_ROOT = "v2/artifacts/irisgate-train-evaluate-deploy"
ALLOWED = f"s3://{BUCKET}/{PIPELINE_ROOT}/"
MODEL_KEY = f"{PIPELINE_ROOT}/{RUN_ID}/train/11/model"
TEST_KEY = f"{PIPELINE_ROOT}/{RUN_ID}/preprocess/10/test_data"


@dataclass(frozen=True)
class Trained:
    model_dir: Path
    test_csv: Path
    accuracy: float


@dataclass(frozen=True)
class Cluster:
    gate_url: str
    standin: StandIn
    s3: S3Server
    trained: Trained
    predictor: Predictor


def train(root: Path) -> Trained:
    """preprocess -> train -> evaluate, the steps' own code on the Iris data."""
    train_split, test_split = split_dataset(load_dataset(None), 0.3, 7)
    train_split.to_csv(root / "train.csv", index=False)
    test_split.to_csv(root / "test.csv", index=False)
    train_model(root / "train.csv", root / "model", "iris", TrainParams())
    accuracy = evaluate_model(root / "model", root / "test.csv").accuracy
    return Trained(root / "model", root / "test.csv", accuracy)


def upload(s3: S3Server, trained: Trained) -> None:
    """What KFP's launcher does when train and preprocess return: their outputs in the
    artifact store, at ``<pipeline root>/<pipeline>/<run id>/<task>/<id>/<output>``."""
    client = s3.client()
    client.create_bucket(Bucket=BUCKET)
    for file in sorted(trained.model_dir.iterdir()):
        client.put_object(Bucket=BUCKET, Key=f"{MODEL_KEY}/{file.name}", Body=file.read_bytes())
    client.put_object(Bucket=BUCKET, Key=TEST_KEY, Body=trained.test_csv.read_bytes())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    schema = crd_path()
    if schema is None:
        if os.environ.get("CI"):
            pytest.fail("KServe CRD schema missing (../shared/schemas or IRISGATE_KSERVE_CRD)")
        pytest.skip("KServe CRD schema not found; set IRISGATE_KSERVE_CRD")
    root = tmp_path_factory.mktemp("cluster")
    trained = train(root)
    with s3_server(root) as s3, run_predictor(trained.model_dir, root) as predictor:
        upload(s3, trained)
        standin = StandIn(schema, latest_url=predictor.url)  # the candidate revision's URL
        standin.add(inference_service("iris-rest", f"{ALLOWED}stable/train/1/model", "1"))
        standin.serve()
        port = free_port()
        gate = start_process(
            ["-m", "gate"],
            root / "gate.log",
            env={
                **s3.credentials,
                "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
                "AWS_CONFIG_FILE": "/nonexistent/config",
                "AWS_EC2_METADATA_DISABLED": "true",
                "GATE_API_TOKEN": TOKEN,
                "GATE_PORT": str(port),
                "GATE_DB_PATH": str(root / "gate.db"),
                "GATE_TICK_INTERVAL_S": "0.2",
                "GATE_TRAFFIC_BACKEND": "kserve",
                "GATE_KSERVE_API_URL": standin.url,
                "GATE_KSERVE_NAMESPACE": "models",
                "GATE_KSERVE_SERVICES": json.dumps({"iris": ["iris-rest"]}),
                "GATE_KSERVE_STORAGE_PREFIXES": json.dumps([ALLOWED]),
                "GATE_HOLDOUT_ALLOWED_PREFIXES": json.dumps([ALLOWED]),
                "GATE_S3_ENDPOINT_URL": s3.url,
                "GATE_S3_TIMEOUT_S": "5",
            },
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(
                lambda: httpx.get(f"{url}/readyz", timeout=1).status_code == 200,
                30,
                "gate",
                gate.process,
                gate.log,
            )
            yield Cluster(url, standin, s3, trained, predictor)
        finally:
            gate.stop()
            standin.stop()
        assert gate.process.poll() is not None


def rollout(cluster: Cluster, rollout_id: str) -> dict[str, Any]:
    answer = httpx.get(f"{cluster.gate_url}/v1/rollouts/{rollout_id}", timeout=5)
    answer.raise_for_status()
    body: dict[str, Any] = answer.json()
    return body


def accuracy_decision(cluster: Cluster, rollout_id: str) -> dict[str, Any]:
    """The rollout's accuracy-gate decision, once made."""
    found: dict[str, Any] = {}

    def decided() -> bool:
        for decision in rollout(cluster, rollout_id)["decisions"]:
            if "offline_accuracy" in (decision.get("evidence") or {}):
                found.update(decision)
                return True
        return False

    wait_until(decided, 30, "the accuracy gate's decision")
    return found


def artifact(name: str, uri: str, local: Path, **metadata: Any) -> Any:
    """An input artifact as KFP's executor hands it over on a cluster: the store's URI,
    and the local copy the launcher downloaded (KFP's own ``custom_path``)."""
    kind = {"model": dsl.Model, "test_data": dsl.Dataset, "metrics": dsl.Metrics}[name]
    made = kind(name=name, uri=uri, metadata=metadata)
    made.custom_path = str(local)
    return made


def test_a_missing_holdout_fails_the_accuracy_gate_naming_the_object(cluster: Cluster) -> None:
    digest = read_metadata(cluster.trained.model_dir).digest
    missing = f"{ALLOWED}{RUN_ID}/preprocess/10/no_such_split"
    record = {
        "name": "iris",
        "version": "41",
        "path": f"s3://{BUCKET}/{MODEL_KEY}",
        "digest": digest,
        "holdout": missing,
    }
    rollout_id = hand_to_gate(cluster.gate_url, TOKEN, record, {"accuracy": 0.97})
    decision = accuracy_decision(cluster, rollout_id)
    assert f"{missing} not found at {cluster.s3.url} (NoSuchKey)" in decision["reason"]
    wait_until(lambda: rollout(cluster, rollout_id)["phase"] == "failed", 30, "failed")


@pytest.mark.parametrize(
    ("field", "changes"),
    [
        ("candidate.holdout_uri", {"holdout": "s3://attacker/holdout.csv"}),
        ("candidate.holdout_uri", {"holdout": f"s3://{BUCKET}/elsewhere/holdout.csv"}),
        ("candidate.artifact_uri", {"path": "s3://attacker/model"}),
    ],
)
def test_a_client_named_bucket_outside_the_allow_list_is_refused(
    cluster: Cluster, field: str, changes: dict[str, str]
) -> None:
    record = {
        "name": "iris",
        "version": "42",
        "path": f"s3://{BUCKET}/{MODEL_KEY}",
        "digest": read_metadata(cluster.trained.model_dir).digest,
        "holdout": f"s3://{BUCKET}/{TEST_KEY}",
        **changes,
    }
    with pytest.raises(HandoffError) as caught:
        hand_to_gate(cluster.gate_url, TOKEN, record, {"accuracy": 0.97})
    assert "(422)" in str(caught.value) and field in str(caught.value)


def test_the_deploy_step_hands_the_stores_uris_and_the_gate_replays_from_there(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained = cluster.trained
    monkeypatch.setenv(GATE_TOKEN_ENV, TOKEN)
    registry = tmp_path / "registry"  # the run notes' folder (a PVC, or the pod's own)
    output = deploy(
        model=artifact("model", f"minio://{BUCKET}/{MODEL_KEY}", trained.model_dir),
        test_data=artifact("test_data", f"minio://{BUCKET}/{TEST_KEY}", trained.test_csv),
        metrics=artifact(
            "metrics", f"minio://{BUCKET}/{PIPELINE_ROOT}/m", tmp_path, accuracy=trained.accuracy
        ),
        registry=str(registry),
        model_name="iris",
        gate_url=cluster.gate_url,
        run_id=RUN_ID,
    )
    record = json.loads(output)
    digest = read_metadata(trained.model_dir).digest
    assert record["path"] == f"s3://{BUCKET}/{MODEL_KEY}"  # minio:// spelled s3://
    assert record["holdout"] == f"s3://{BUCKET}/{TEST_KEY}"
    assert record["digest"] == digest
    assert record["version"] == run_version(RUN_ID) and len(record["version"]) == 15
    assert registry_versions(registry, "iris") == []  # nothing copied into a registry
    note = json.loads((registry / "iris" / "runs" / f"{RUN_ID}.json").read_text())
    assert note["finished"] and note["record"] == record

    state = rollout(cluster, record["rollout_id"])
    assert state["candidate"]["artifact_uri"] == record["path"]
    assert state["candidate"]["holdout_uri"] == record["holdout"]
    assert state["candidate"]["digest"] == digest
    decision = accuracy_decision(cluster, record["rollout_id"])
    evidence = decision["evidence"]
    assert evidence["replayed_rows"] == 45  # the test split, read from the object store
    assert evidence["live_accuracy"] == pytest.approx(trained.accuracy)
    assert "accuracy gate passed" in decision["reason"]
    env = cluster.standin.objects["iris-rest"]["spec"]["predictor"]["containers"][0]["env"]
    assert {"name": "STORAGE_URI", "value": record["path"]} in env  # KServe's initializer
    assert {"name": "PREDICTOR_MODEL_DIGEST", "value": digest} in env
    assert cluster.standin.rejected == []
    httpx.post(
        f"{cluster.gate_url}/v1/rollouts/{record['rollout_id']}/abort",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=5,
    ).raise_for_status()
