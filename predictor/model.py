"""The ``kserve.Model`` that serves a verified scikit-learn artifact.

It knows nothing of HTTP or gRPC: KServe hands it a dict (v1) or an ``InferRequest`` (v2
REST and gRPC alike), and it answers with a dict or an ``InferResponse``. Validation lives
in :mod:`predictor.inputs`; this class only adapts KServe's types to it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from kserve import Model
from kserve.protocol.infer_type import InferInput, InferOutput, InferRequest, InferResponse

from predictor.artifact import ArtifactMetadata, load_artifact
from predictor.batching import Batcher
from predictor.errors import PredictorError, Reason
from predictor.fastpath import FastPath, compile_fast_path
from predictor.faults import FaultInjector
from predictor.inputs import (
    SUPPORTED_DATATYPES,
    check_outputs,
    matrix_from_tensor,
    matrix_from_v1,
)
from predictor.metrics import PredictorMetrics
from predictor.signing import TrustedKey

logger = logging.getLogger(__name__)


class Prediction:
    """Class ids, probabilities and names for one request's rows."""

    def __init__(
        self, class_ids: np.ndarray, probabilities: np.ndarray, class_names: list[str]
    ) -> None:
        self.class_ids = class_ids
        self.probabilities = probabilities
        self.labels = [class_names[i] for i in class_ids]


class IrisModel(Model):  # type: ignore[misc]
    """Serves one artifact directory. ``load()`` verifies before it deserializes."""

    def __init__(
        self,
        name: str,
        model_dir: Path | str,
        *,
        max_rows: int,
        metrics_role: str = "stable",
        faults: FaultInjector | None = None,
        metrics: PredictorMetrics | None = None,
        batch_max_rows: int = 0,
        batch_max_wait_ms: float = 0.0,
        fast_path: bool = True,
        trusted_keys: Sequence[TrustedKey] | None = None,
        expected_digest: str | None = None,
        allow_pickle: bool = False,
    ) -> None:
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.max_rows = max_rows
        self.role = metrics_role
        self.faults = faults or FaultInjector()
        self.metrics = metrics
        self.metadata: ArtifactMetadata | None = None
        self._estimator: Any = None
        self.batch_max_rows = batch_max_rows  # 0: no batching
        self.batch_max_wait_ms = batch_max_wait_ms
        self.batcher: Batcher | None = None
        self.use_fast_path = fast_path
        self.fast_path: FastPath | None = None
        # None: the writer's own key (tests, local tools); the predictor passes its keys.
        self.trusted_keys = trusted_keys
        self.expected_digest = expected_digest
        self.allow_pickle = allow_pickle

    # --- lifecycle -------------------------------------------------------------------
    def load(self) -> bool:
        estimator, metadata = load_artifact(
            self.model_dir,
            trusted_keys=self.trusted_keys,
            expected_digest=self.expected_digest,
            allow_pickle=self.allow_pickle,
        )
        self._estimator, self.metadata = estimator, metadata
        if self.use_fast_path:
            self._compile_fast_path()
        if self.metrics is None:
            self.metrics = PredictorMetrics(self.name, metadata.version, self.role)
        self.metrics.set_info(metadata.sha256)
        self.metrics.initialize(metadata.class_names)
        if self.batch_max_rows > 0:
            self.batcher = Batcher(
                self._probabilities,
                self.batch_max_rows,
                self.batch_max_wait_ms,
                self.metrics.observe_batch,
                in_thread=self.fast_path is None,
            )
        logger.info(
            "loaded %s version %s (%s sha256 %s..., signature verified, scikit-learn %s) as %s",
            metadata.name,
            metadata.version,
            metadata.format,
            metadata.sha256[:12],
            metadata.sklearn_version,
            self.role,
        )
        self.ready = True
        return True

    def _compile_fast_path(self) -> None:
        result = compile_fast_path(self._estimator)
        self.fast_path = result.fast_path
        if result.fast_path is None:
            logger.warning("fast path off, serving with scikit-learn: %s", result.reason)
            return
        logger.info(
            "fast path on: %s, equal to scikit-learn on %d verification rows",
            result.fast_path.description,
            result.fast_path.checked_rows,
        )

    @property
    def _meta(self) -> ArtifactMetadata:
        if self.metadata is None:
            raise PredictorError(Reason.MODEL_NOT_READY, f"model {self.name} is not loaded")
        return self.metadata

    @property
    def n_features(self) -> int:
        return len(self._meta.feature_names)

    # --- v2 metadata -----------------------------------------------------------------
    def get_input_types(self) -> list[dict[str, Any]]:
        return [{"name": "input-0", "datatype": "FP32", "shape": [-1, self.n_features]}]

    def get_output_types(self) -> list[dict[str, Any]]:
        n_classes = len(self._meta.class_names)
        return [
            {"name": "predict", "datatype": "INT64", "shape": [-1]},
            {"name": "predict_proba", "datatype": "FP32", "shape": [-1, n_classes]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ]

    # --- inference -------------------------------------------------------------------
    def _probabilities(self, matrix: np.ndarray) -> np.ndarray:
        if self.fast_path is not None:
            return self.fast_path.predict_proba(matrix)
        return np.asarray(self._estimator.predict_proba(matrix), dtype=np.float64)

    async def classify(self, matrix: np.ndarray) -> Prediction:
        if self.batcher is not None:
            probabilities = await self.batcher.submit(matrix)
        else:
            probabilities = self._probabilities(matrix)
        class_ids = probabilities.argmax(axis=1).astype(np.int64)
        if self.metrics is not None:
            counts = np.bincount(class_ids, minlength=len(self._meta.class_names))
            self.metrics.count_predictions(self._meta.class_names, counts.tolist())
        return Prediction(class_ids, probabilities, self._meta.class_names)

    async def classify_tensor(
        self,
        datatype: str,
        shape: Sequence[int],
        read_data: Callable[[], Any],
        requested: Sequence[str],
    ) -> tuple[Prediction, tuple[str, ...]]:
        """One v2 input tensor (REST or gRPC) and the output names asked for: the checks,
        in the order clients see their errors, then the prediction."""
        outputs = check_outputs(requested)
        matrix = matrix_from_tensor(datatype, shape, read_data, self.n_features, self.max_rows)
        return await self.classify(matrix), outputs

    async def predict(
        self,
        payload: Any,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> Any:
        await self.faults.apply()
        if isinstance(payload, InferRequest):
            return await self._predict_v2(payload)
        return await self._predict_v1(payload)

    async def _predict_v1(self, body: Any) -> dict[str, Any]:
        matrix = matrix_from_v1(body, self.n_features, self.max_rows)
        requested = body.get("outputs") or []
        if not isinstance(requested, list) or not all(isinstance(n, str) for n in requested):
            raise PredictorError(Reason.MALFORMED_REQUEST, '"outputs" must be a list of names')
        outputs = check_outputs(requested)
        prediction = await self.classify(matrix)
        response: dict[str, Any] = {"predictions": prediction.class_ids.tolist()}
        if "predict_proba" in outputs:
            response["probabilities"] = prediction.probabilities.round(6).tolist()
        if "label" in outputs:
            response["labels"] = prediction.labels
        return response

    async def _predict_v2(self, request: InferRequest) -> InferResponse:
        if len(request.inputs) != 1:
            raise PredictorError(
                Reason.WRONG_INPUT_COUNT,
                f"expected exactly one input tensor, got {len(request.inputs)}",
            )
        tensor: InferInput = request.inputs[0]
        prediction, outputs = await self.classify_tensor(
            tensor.datatype,
            tensor.shape,
            lambda: _tensor_data(tensor),
            [o.name for o in request.request_outputs or []],
        )
        rows = len(prediction.class_ids)
        built: dict[str, InferOutput] = {}
        if "predict" in outputs:
            built["predict"] = InferOutput("predict", [rows], "INT64", data=prediction.class_ids)
        if "predict_proba" in outputs:
            proba = prediction.probabilities.astype(np.float32)
            built["predict_proba"] = InferOutput(
                "predict_proba", list(proba.shape), "FP32", data=proba
            )
        if "label" in outputs:
            labels = np.array([s.encode() for s in prediction.labels], dtype=np.object_)
            built["label"] = InferOutput("label", [rows], "BYTES", data=labels)
        for output in built.values():
            output.set_data_from_numpy(output.data, binary_data=False)
        return InferResponse(
            response_id=request.id or "",
            model_name=self.name,
            model_version=self._meta.version,
            infer_outputs=[built[name] for name in outputs],
            from_grpc=request.from_grpc,
            use_binary_outputs=request.use_binary_outputs,
            requested_outputs=request.request_outputs,
        )


def _tensor_data(tensor: InferInput) -> Any:
    """The tensor's values without coercion: raw bytes by their declared type, else the list."""
    raw = getattr(tensor, "_raw_data", None)
    if raw is not None:
        return np.frombuffer(raw, dtype=SUPPORTED_DATATYPES[tensor.datatype])
    return tensor.data
