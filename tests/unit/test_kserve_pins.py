"""Every private KServe name the predictor relies on, in one place.

The predictor subclasses KServe's servers and reaches into a few of their internals, and
its REST fast lane repeats what two of KServe's endpoint functions do. A KServe upgrade
that moves any of this fails here, with the file to re-check, instead of somewhere deep in
an integration test."""

from __future__ import annotations

import hashlib
import inspect
from importlib.metadata import version

import pytest
from fastapi.responses import ORJSONResponse
from kserve import Model, ModelServer
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.infer_type import InferInput
from kserve.protocol.rest.server import RESTServer
from kserve.protocol.rest.v1_endpoints import V1Endpoints
from kserve.protocol.rest.v2_endpoints import V2Endpoints


def test_the_kserve_version_these_pins_were_checked_against() -> None:
    assert version("kserve") == "0.21.0", "re-check every pin below, then update this line"


@pytest.mark.parametrize(
    ("owner", "name", "used_by"),
    [
        (RESTServer, "create_application", "predictor/server.py IrisRESTServer.start"),
        (RESTServer, "_add_middlewares", "predictor/server.py IrisRESTServer"),
        (RESTServer, "_register_endpoints", "predictor/server.py IrisRESTServer"),
        (RESTServer, "_add_exception_handlers", "predictor/server.py IrisRESTServer"),
        (ModelServer, "_register_and_check_atleast_one_model_is_ready", "IrisModelServer.start"),
        (ModelServer, "setup_event_loop", "IrisModelServer.start"),
        (ModelServer, "register_signal_handler", "IrisModelServer.start"),
        (ModelServer, "_serve", "IrisModelServer.start"),
        (ExceptionToStatusInterceptor, "handle_exception", "QuietExceptionToStatusInterceptor"),
        (Model, "__call__", "the data plane's infer, used by the fast lane"),
    ],
)
def test_private_methods_the_predictor_overrides_or_calls(
    owner: type, name: str, used_by: str
) -> None:
    assert callable(getattr(owner, name, None)), f"{owner.__name__}.{name} is gone ({used_by})"


def test_private_attributes_set_by_kserve_constructors() -> None:
    servicer_init = inspect.getsource(InferenceServicer.__init__)
    assert "self._data_plane = data_plane" in servicer_init  # IrisServicer.ModelInfer
    rest_init = inspect.getsource(RESTServer.__init__)
    assert "self._server" in rest_init  # IrisRESTServer.start / draining / listening
    import uvicorn

    # IrisRESTServer.listening: uvicorn sets it once its sockets listen (group readiness)
    assert uvicorn.Server(uvicorn.Config(app="kserve.model_server:app")).started is False
    model_server_init = inspect.getsource(ModelServer.__init__)
    assert "self.event_loop = event_loop" in model_server_init  # IrisModelServer.start
    tensor = InferInput("x", [1, 4], "FP32")
    assert hasattr(tensor, "_raw_data")  # REST binary tensors are attached here


def test_the_app_kserve_serves_answers_with_orjson() -> None:
    from kserve.model_server import app

    assert app.router.default_response_class is ORJSONResponse  # the fast lane's too


# The fast lane (predictor/fastlane.py) repeats these two functions' calls and their order.
# A change in either means re-reading it against the new code, then updating the digest.
ENDPOINTS = {
    "V1Endpoints.predict": (V1Endpoints.predict, "b1da6ffcb904c89d"),
    "V2Endpoints.infer": (V2Endpoints.infer, "57fdb35815a30a11"),
}


@pytest.mark.parametrize("name", sorted(ENDPOINTS))
def test_the_endpoints_the_fast_lane_repeats_are_unchanged(name: str) -> None:
    function, digest = ENDPOINTS[name]
    source = inspect.getsource(function).encode()
    assert hashlib.sha256(source).hexdigest()[:16] == digest, (
        f"KServe's {name} changed: re-check predictor/fastlane.py against it"
    )
