"""The stack floor: a KServe model that returns a constant, served like irisgate's predictor.

The model costs nothing, so what this server sustains is the most any model behind
``kserve.ModelServer`` could, with the same server settings irisgate uses: no access log
and no per-request latency log (``quiet-logging.json``, which KServe applies in every
``--workers`` process too) and the same process count. irisgate's predictor is judged
against it. Run as a script::

    python benchmarks/constant_kserve.py --model_name iris --http_port 9000 --grpc_port 9001 \
        --log_config_file benchmarks/quiet-logging.json [--workers N]
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server

ANSWER = np.array([1], dtype=np.int64)


class ConstantModel(Model):  # type: ignore[misc]
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.ready = True

    async def predict(
        self,
        payload: dict[str, Any] | InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any] | InferResponse:
        if isinstance(payload, InferRequest):
            output = InferOutput(name="predict", shape=[1], datatype="INT64", data=ANSWER)
            output.set_data_from_numpy(ANSWER, binary_data=False)
            return InferResponse(
                model_name=self.name,
                infer_outputs=[output],
                response_id=payload.id or "",
                from_grpc=payload.from_grpc,
            )
        return {"predictions": [1]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    args, _ = parser.parse_known_args()
    ModelServer(enable_latency_logging=False).start([ConstantModel(args.model_name)])
