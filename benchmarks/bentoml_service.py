"""BentoML's peer: the benchmark's fitted estimator behind a batchable BentoML 1.4 API.

Served from BentoML's own venv (``.bench/bentoml-venv``, see :mod:`benchmarks.venvs`):
``bentoml serve benchmarks.bentoml_service:IrisClassifier --arg model=PATH --host 127.0.0.1
--port P`` from the repository root, PATH naming the ``model.joblib`` the other peers load
(written by ``make_artifacts``); ``--arg`` is BentoML's way to parametrise a service, and
puts PATH on every worker's command line. This module imports only what that venv has:
BentoML, numpy, joblib (scikit-learn's).

The service is BentoML's documented scikit-learn example: two worker processes, adaptive
batching of up to 64 rows, and BentoML's own JSON wire format (not the v2 protocol): one
request is ``{"features": [[6.8, 2.8, 4.8, 1.4]]}``, a batch of one row, its answer ``[1]``.
BentoML's dispatcher refuses (503) a request that has waited ``max_latency_ms``: that is
the load generator's own timeout (wrk ``--timeout 10s``), so it never gives up first.
"""

from __future__ import annotations

import bentoml
import joblib
import numpy as np

ARGS = bentoml.use_arguments()  # --arg model=PATH


@bentoml.service(workers=2)
class IrisClassifier:
    def __init__(self) -> None:
        self.model = joblib.load(ARGS.model)

    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=10_000)  # type: ignore[untyped-decorator]
    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(features))
