"""The baseline: a custom KServe model written the way KServe's documentation shows.

Deliberately ordinary: ``joblib.load`` in ``load()``, a synchronous ``predict()`` calling
scikit-learn once per request, and ``kserve.ModelServer`` with its defaults (access log and
latency log on). This is what a team gets by following the docs; the benchmark measures
how far irisgate's predictor is from it. Run as a script::

    python benchmarks/plain_kserve.py --model_name iris --model_dir DIR \
        --http_port 9000 --grpc_port 9001
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import joblib
from kserve import InferRequest, InferResponse, Model, ModelServer, model_server
from kserve.utils.utils import get_predict_input, get_predict_response


class SklearnModel(Model):  # type: ignore[misc]
    def __init__(self, name: str, model_dir: str) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.model: Any = None
        self.load()

    def load(self) -> bool:
        self.model = joblib.load(Path(self.model_dir) / "model.joblib")
        self.ready = True
        return True

    def predict(
        self,
        payload: dict[str, Any] | InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any] | InferResponse:
        instances = get_predict_input(payload)
        result = self.model.predict(instances)
        return get_predict_response(payload, result, self.name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model_dir", required=True)
    args, _ = parser.parse_known_args()
    ModelServer().start([SklearnModel(args.model_name, args.model_dir)])
