"""Property-based tests of the HTTP API from its own OpenAPI document (schemathesis).

Whatever schemathesis sends, valid or not, the live server answers without a 5xx, with a
status code and a body its OpenAPI document declares.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.pgwake_fixture import ADMIN_TOKEN, Pgwake, serve

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
#: Each new endpoint is a ~35 MB copy: creates go through a token allowed five.
MAX_CREATES = 5
#: A branch is a base backup (~1 s here): after this many, its source goes away.
MAX_BRANCHES = 3
_branched: list[str] = []


@pytest.fixture(scope="module")
def live() -> Iterator[Pgwake]:
    with serve() as server:
        # The endpoint the OpenAPI examples name, so that some calls find one.
        created = httpx.post(
            f"{server.api_url}/v1/endpoints", json={"name": "demo"}, headers=ADMIN, timeout=60
        )
        assert created.status_code == 201, created.text
        yield server


@pytest.fixture(scope="module")
def creator(live: Pgwake) -> dict[str, str]:
    minted = httpx.post(
        f"{live.api_url}/v1/tokens",
        json={"label": "schemathesis", "max_endpoints": MAX_CREATES},
        headers=ADMIN,
        timeout=60,
    )
    assert minted.status_code == 201, minted.text
    return {"Authorization": f"Bearer {minted.json()['token']}"}


@pytest.fixture(scope="module")
def api_schema(live: Pgwake) -> Any:
    return schemathesis.openapi.from_url(f"{live.api_url}/openapi.json", timeout=30)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_answers_every_request_as_documented(
    case: Any, live: Pgwake, creator: dict[str, str]
) -> None:
    headers = creator if (case.method, case.path) == ("POST", "/v1/endpoints") else ADMIN
    response = case.call(base_url=live.api_url, headers=headers, timeout=60)
    try:
        case.validate_response(response, checks=CHECKS, headers=headers)
    finally:
        if response.status_code == 201 and case.path == "/v1/endpoints/{name}/branches":
            # A branch is a copy of its source's data: delete it again at once.
            _branched.append(response.json()["name"])
            doomed = [_branched[-1]] + (["demo"] if len(_branched) == MAX_BRANCHES else [])
            for name in doomed:
                httpx.delete(f"{live.api_url}/v1/endpoints/{name}", headers=ADMIN, timeout=60)
        if response.status_code == 204 and case.path_parameters == {"name": "demo"}:
            # Deleted: make it again, so that the operations after this one find it too.
            httpx.post(
                f"{live.api_url}/v1/endpoints", json={"name": "demo"}, headers=ADMIN, timeout=60
            )
