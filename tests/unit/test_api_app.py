"""The API application in process (no server): error shapes, validation, the schema."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from pgwake.api import create_app
from pgwake.endpoint.control_plane import ControlPlane
from tests.unit.test_control import ADMIN_TOKEN, _control

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _request(control: ControlPlane, method: str, path: str, **kwargs: Any) -> httpx.Response:
    app = create_app(control, ready=lambda: False)

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(send())


def test_an_unexpected_error_is_a_logged_json_500(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    control, _, _ = _control(tmp_path)

    def broken(caller: object) -> list[object]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(control, "list_endpoints", broken)
    with caplog.at_level(logging.ERROR, logger="pgwake.api.app"):
        response = _request(control, "GET", "/v1/endpoints", headers=AUTH)
    assert response.status_code == 500
    assert response.json() == {
        "error": {"code": "internal_error", "message": "internal error; see pgwake's log"}
    }
    assert "a bug" not in response.text
    (record,) = [r for r in caplog.records if "event=api_internal_error" in r.message]
    assert record.exc_info is not None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"ttl_seconds": 0}, "ttl_seconds: Input should be greater than or equal to 1"),
        ({"allowed_cidrs": ["nope"]}, "allowed_cidrs.0: must be a network in CIDR notation"),
        ({"password": "pw\u0000-with-nul"}, "password: must not contain NUL characters"),
        ({"x": 1}, "x: Extra inputs are not permitted"),
    ],
)
def test_validation_errors_say_what_is_wrong(
    tmp_path: Path, body: dict[str, Any], message: str
) -> None:
    control, _, _ = _control(tmp_path)
    response = _request(control, "POST", "/v1/endpoints", json=body, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"
    assert response.json()["error"]["message"].startswith(message)


def test_body_that_is_not_utf8_is_an_invalid_request(tmp_path: Path) -> None:
    control, _, _ = _control(tmp_path)
    response = _request(
        control,
        "POST",
        "/v1/tokens",
        content=b'{"label": "\xff"}',
        headers={**AUTH, "content-type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


def test_readyz_follows_ready(tmp_path: Path) -> None:
    control, _, _ = _control(tmp_path)
    response = _request(control, "GET", "/readyz")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "not_ready"


def test_every_v1_operation_documents_its_errors_and_needs_a_token(tmp_path: Path) -> None:
    control, _, _ = _control(tmp_path)
    spec = create_app(control, ready=lambda: True).openapi()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            if not path.startswith("/v1/"):
                assert "security" not in operation, path
                continue
            assert operation["security"] == [{"HTTPBearer": []}], (method, path)
            assert "401" in responses, (method, path)
            if operation.get("parameters") or "requestBody" in operation:
                assert "422" in responses, (method, path)
            for status, response in responses.items():
                if status.startswith(("4", "5")):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorResponse"}
    assert "HTTPValidationError" not in spec["components"]["schemas"]
