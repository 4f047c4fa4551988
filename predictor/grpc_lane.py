"""The gRPC fast lane: ``ModelInfer`` for the served model without KServe's types around it.

KServe's servicer turns every ``ModelInferRequest`` into an ``InferRequest``, goes through
``DataPlane.infer`` and ``Model.__call__`` (three timed Prometheus histograms, coroutine
checks by ``inspect``), builds ``InferOutput`` objects and converts them back with
``InferResponse.to_grpc``. For the plain request a client sends (one FP32/FP64 tensor in
``contents``, no ``raw_input_contents``, no parameters) this lane makes the model's own
calls directly (faults, the same checks in the same order, the same prediction) and
writes the ``ModelInferResponse`` itself: the same message, byte for byte
(``tests/integration/test_fastlane.py`` compares them), in a fraction of the Python.

Everything else (another model, raw or typed differently, several inputs, parameters, a
model not ready) goes through KServe's servicer unchanged, so its answers and errors stay
KServe's. KServe's per-step histograms (``request_predict_seconds`` ...) are not observed
for calls the lane answers; the predictor's own request metrics are, as for every call.
"""

from __future__ import annotations

from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

from predictor.model import IrisModel, Prediction

# the datatypes the model takes, spelled as the lane takes them (others: KServe's path)
_CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents"}


class GrpcLane:
    """Answers ``ModelInfer`` for one model, or says it does not take the request."""

    def __init__(self, model: IrisModel) -> None:
        self.model = model

    def takes(self, request: pb.ModelInferRequest) -> bool:
        """The plain single-tensor request of the served, ready model (checked cheaply)."""
        if (
            request.model_name != self.model.name
            or not self.model.ready
            or len(request.inputs) != 1
            or request.raw_input_contents
            or request.parameters
        ):
            return False
        tensor = request.inputs[0]
        return tensor.datatype in _CONTENTS and not tensor.parameters

    async def infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        """What ``IrisModel.predict`` and ``InferResponse.to_grpc`` make of the request."""
        model = self.model
        tensor = request.inputs[0]
        contents = getattr(tensor.contents, _CONTENTS[tensor.datatype])
        await model.faults.apply()
        prediction, outputs = await model.classify_tensor(
            tensor.datatype,
            tensor.shape,
            lambda: list(contents),
            [output.name for output in request.outputs],
        )
        assert model.metadata is not None  # ready
        return pb.ModelInferResponse(
            model_name=model.name,
            model_version=model.metadata.version,
            id=request.id,
            outputs=[_output(name, prediction) for name in outputs],
        )


def _output(name: str, prediction: Prediction) -> pb.ModelInferResponse.InferOutputTensor:
    """One output as KServe's ``to_grpc`` writes a non-binary ``InferOutput``."""
    rows = len(prediction.class_ids)
    if name == "predict":
        contents = pb.InferTensorContents(int64_contents=prediction.class_ids.tolist())
        return pb.ModelInferResponse.InferOutputTensor(
            name=name, datatype="INT64", shape=[rows], contents=contents
        )
    if name == "predict_proba":
        proba = prediction.probabilities
        values = proba.astype("float32").ravel().tolist()
        contents = pb.InferTensorContents(fp32_contents=values)
        return pb.ModelInferResponse.InferOutputTensor(
            name=name, datatype="FP32", shape=list(proba.shape), contents=contents
        )
    labels = [label.encode() for label in prediction.labels]
    return pb.ModelInferResponse.InferOutputTensor(
        name=name,
        datatype="BYTES",
        shape=[rows],
        contents=pb.InferTensorContents(bytes_contents=labels),
    )
