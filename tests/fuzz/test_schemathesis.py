"""Schemathesis against the OpenAPI schema a real server publishes at /openapi.json.

schemathesis 4.32's pytest integration (``schemathesis.pytest.from_fixture``) fails under
pytest 9 (``'Function' object has no attribute '_nodeid'``), so the schema's strategies are
driven by plain hypothesis ``@given`` instead. Each flavour gets its own uvicorn server.

Checks: no 5xx, documented status codes and headers, response schemas. Content-Type
conformance only where responses are JSON: objects go out with their own media type
(video/mp4, text/plain, multipart/byteranges...), which the schema cannot list per key.
"""

from __future__ import annotations

import warnings

import pytest
import schemathesis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import MediaTree, StartServer, settings_for


@pytest.fixture(scope="module", params=["sync", "async"])
def api_schema(
    request: pytest.FixtureRequest, media: MediaTree, serve: StartServer
) -> schemathesis.BaseSchema:
    running = serve(settings_for(media, request.param, access_log=False))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Duplicate Operation ID", UserWarning)
        # FastAPI warns about the duplicate operationId (see the last test) on the first
        # /openapi.json, which filterwarnings=error turns into a 500 in the server thread.
        running.app.openapi()  # builds and caches the schema here, the warning silenced
    return schemathesis.openapi.from_url(f"{running.url}/openapi.json", timeout=5)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_api(
    api_schema: schemathesis.BaseSchema, mode: GenerationMode, data: st.DataObject
) -> None:
    case = data.draw(api_schema.as_strategy(generation_mode=mode))
    response = case.call_and_validate(
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_headers_conformance,
            response_schema_conformance,
        ],
        timeout=5,
    )
    event(f"{case.method} {case.path} -> {response.status_code}")


KEYS = ["video/clip.mp4", "hello.txt", "empty.bin", "page.svg", "dir/inner.mp3", "linked.txt"]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_existing_objects(
    api_schema: schemathesis.BaseSchema, method: str, data: st.DataObject
) -> None:
    key = data.draw(st.sampled_from(KEYS))
    operation = api_schema["/objects/{key}"][method]
    case = data.draw(operation.as_strategy(path_parameters={"key": key}))
    response = case.call_and_validate(
        checks=[
            not_a_server_error,
            status_code_conformance,
            response_headers_conformance,
            response_schema_conformance,
        ],
        timeout=5,
    )
    event(f"{case.method} {case.path} -> {response.status_code}")


def test_operation_ids_are_unique(api_schema: schemathesis.BaseSchema) -> None:
    # OpenAPI 3.1 §4.8.10: "The id MUST be unique among all operations described in the API."
    # Code generators name methods after it; FastAPI warns "Duplicate Operation ID".
    seen: dict[str, list[str]] = {}
    for path, item in api_schema.raw_schema["paths"].items():
        for method, operation in item.items():
            if isinstance(operation, dict) and "operationId" in operation:
                seen.setdefault(operation["operationId"], []).append(f"{method.upper()} {path}")
    duplicates = {op_id: where for op_id, where in seen.items() if len(where) > 1}
    assert not duplicates, duplicates
