"""Per-endpoint session settings (``park_sessions``, ``pinned_session_timeout``) from the
catalog to the lifecycle, and the view of an endpoint's sessions, through the control
plane, the API and ``pgwake endpoint``."""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from pgwake import metrics
from pgwake.api.client import Endpoint, PinnedSession, build
from pgwake.catalog import Catalog
from pgwake.cli.endpoint_output import print_endpoint, session_lines
from pgwake.cli.endpoint_parser import setting_changes
from pgwake.cli.main import _parser
from pgwake.endpoint import compute_resources
from pgwake.endpoint.callers import ADMIN, ControlError
from pgwake.endpoint.compute_resources import NoResources, SessionStates
from pgwake.endpoint.control_plane import ControlPlane
from pgwake.endpoint.lifecycles import LifecycleManager
from tests.unit.test_api_app import AUTH, _request
from tests.unit.test_control import ADMIN_TOKEN, _control

_PINNED = compute_resources.PinnedSession(
    client="127.0.0.1", application_name="psql", since=1_800_000_000.0, reason="temporary tables"
)


class FakeSessionsHook(NoResources):
    """Test double of the edge's in-process ``ComputeResources`` hook: it reports the
    sessions it is given, per endpoint."""

    def __init__(self) -> None:
        self.states: dict[str, SessionStates] = {}

    def session_states(self, endpoint: str) -> SessionStates:
        return self.states.get(endpoint, SessionStates())


#: mypy checks here that the double is a ``ComputeResources``.
_HOOK: compute_resources.ComputeResources = FakeSessionsHook()


def _control_with(tmp_path: Path, hook: FakeSessionsHook) -> ControlPlane:
    control, _, catalog = _control(tmp_path)
    lifecycles = LifecycleManager(control.backends, catalog, 300, 30, resources=hook)
    return ControlPlane(control.settings, catalog, control.backends, lifecycles, ADMIN_TOKEN)


# -- the catalog ---------------------------------------------------------------------------


def test_an_older_catalog_gains_the_columns_and_reads_as_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite3"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE endpoints (name TEXT PRIMARY KEY, backend TEXT NOT NULL, "
        "idle_timeout REAL, created_at REAL NOT NULL, last_active REAL, "
        "state TEXT NOT NULL DEFAULT 'suspended', state_reason TEXT)"
    )
    old.execute("INSERT INTO endpoints (name, backend, created_at) VALUES ('old', 'local', 1)")
    old.commit()
    old.close()
    catalog = Catalog(path)
    record = catalog.get("old")
    assert record is not None
    assert (record.park_sessions, record.pinned_session_timeout) == (True, None)


def test_session_settings_round_trip(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.sqlite3")
    first = catalog.add_endpoint("a", "local", None, "app", "v")
    assert (first.park_sessions, first.pinned_session_timeout) == (True, None)
    second = catalog.add_endpoint(
        "b", "local", None, "app", "v", park_sessions=False, pinned_session_timeout=60.5
    )
    assert (second.park_sessions, second.pinned_session_timeout) == (False, 60.5)
    catalog.set_session_settings(
        "b", idle_timeout=5.0, park_sessions=True, pinned_session_timeout=None
    )
    changed = catalog.get("b")
    assert changed is not None
    assert (changed.idle_timeout, changed.park_sessions, changed.pinned_session_timeout) == (
        5.0,
        True,
        None,
    )


# -- the lifecycle -------------------------------------------------------------------------


def test_the_manager_hands_the_record_s_settings_to_the_lifecycle(tmp_path: Path) -> None:
    control, _, catalog = _control(tmp_path)
    record = catalog.add_endpoint(
        "held", "fake", None, "app", "v", park_sessions=False, pinned_session_timeout=30.0
    )
    lifecycle = control.lifecycles.get(record)
    assert (lifecycle.park_sessions, lifecycle.pinned_session_timeout) == (False, 30.0)
    catalog.set_session_settings(
        "held", idle_timeout=None, park_sessions=True, pinned_session_timeout=None
    )
    updated = catalog.get("held")
    assert updated is not None
    assert control.lifecycles.get(updated) is lifecycle
    assert (lifecycle.park_sessions, lifecycle.pinned_session_timeout) == (True, None)


def test_an_endpoint_s_session_series_start_at_zero_and_go_with_it(tmp_path: Path) -> None:
    control, _, catalog = _control(tmp_path)
    control.lifecycles.get(catalog.add_endpoint("counted", "fake", None, "app", "v"))
    for state in metrics.SESSION_STATES:
        labels = {"endpoint": "counted", "state": state}
        assert REGISTRY.get_sample_value("pgwake_client_sessions", labels) == 0
    for outcome in metrics.REATTACH_OUTCOMES:
        labels = {"endpoint": "counted", "outcome": outcome}
        assert REGISTRY.get_sample_value("pgwake_reattaches_total", labels) == 0
    labels = {"endpoint": "counted", "reason": "listen"}
    assert REGISTRY.get_sample_value("pgwake_pinned_sessions", labels) == 0
    labels = {"endpoint": "counted", "outcome": "parked"}
    assert REGISTRY.get_sample_value("pgwake_parks_total", labels) == 0
    count = {"backend": "fake", "le": "+Inf"}
    assert REGISTRY.get_sample_value("pgwake_reattach_duration_seconds_bucket", count) == 0
    control.lifecycles.forget("counted")
    gone = {"endpoint": "counted", "state": "idle"}
    assert REGISTRY.get_sample_value("pgwake_client_sessions", gone) is None


# -- the view ------------------------------------------------------------------------------


def test_the_view_shows_the_sessions_by_state_and_the_settings(tmp_path: Path) -> None:
    hook = FakeSessionsHook()
    control = _control_with(tmp_path, hook)
    asyncio.run(control.create(ADMIN, name="seen", park_sessions=False))
    hook.states["seen"] = SessionStates(active=1, idle=2, parked=3, pinned=(_PINNED,))
    view = control.get(ADMIN, "seen")
    assert (view.session_states.active, view.session_states.idle) == (1, 2)
    assert (view.session_states.parked, view.session_states.pinned) == (3, 1)
    assert view.sessions == 7
    assert view.pinned_sessions == (_PINNED,)
    assert (view.park_sessions, view.pinned_session_timeout_seconds) == (False, None)
    assert view.compute_other_sessions is None  # never checked


def test_the_view_shows_the_compute_s_other_sessions_as_last_counted(tmp_path: Path) -> None:
    control = _control_with(tmp_path, FakeSessionsHook())
    asyncio.run(control.create(ADMIN, name="shared"))
    record = control.record(ADMIN, "shared")
    control.lifecycles.get(record).compute_other_sessions = 2  # the monitor's last count
    assert control.get(ADMIN, "shared").compute_other_sessions == 2


def test_without_session_states_the_lifecycle_s_count_stands(tmp_path: Path) -> None:
    control, _, _ = _control(tmp_path)  # NoResources: no states
    asyncio.run(control.create(ADMIN, name="plain"))
    control.lifecycles.get(control.record(ADMIN, "plain")).acquire()
    assert control.get(ADMIN, "plain").sessions == 1


def test_a_branch_keeps_its_source_s_session_settings(tmp_path: Path) -> None:
    control, _, _ = _control(tmp_path)

    async def scenario() -> None:
        await control.create(ADMIN, name="trunk", park_sessions=False, pinned_session_timeout=9)
        await control.branch(ADMIN, "trunk", name="twig")

    asyncio.run(scenario())
    twig = control.get(ADMIN, "twig")
    assert (twig.park_sessions, twig.pinned_session_timeout_seconds) == (False, 9)


def test_update_changes_only_what_it_is_given(tmp_path: Path) -> None:
    control, _, _ = _control(tmp_path)
    asyncio.run(control.create(ADMIN, name="tuned", idle_timeout=7, pinned_session_timeout=9))
    view = control.update(ADMIN, "tuned", park_sessions=False)
    assert (view.idle_timeout_seconds, view.park_sessions) == (7, False)
    assert view.pinned_session_timeout_seconds == 9
    view = control.update(ADMIN, "tuned", idle_timeout=None, pinned_session_timeout=None)
    assert (view.idle_timeout_seconds, view.pinned_session_timeout_seconds) == (300, None)
    with pytest.raises(ControlError) as refused:
        control.update(ADMIN, "nowhere", park_sessions=True)
    assert refused.value.code == "endpoint_not_found"


# -- the API -------------------------------------------------------------------------------


def test_the_api_takes_and_shows_the_settings(tmp_path: Path) -> None:
    hook = FakeSessionsHook()
    control = _control_with(tmp_path, hook)
    body = {"name": "api", "park_sessions": False, "pinned_session_timeout_seconds": 30}
    created = _request(control, "POST", "/v1/endpoints", json=body, headers=AUTH)
    assert created.status_code == 201, created.text
    assert created.json()["park_sessions"] is False
    assert created.json()["pinned_session_timeout_seconds"] == 30
    hook.states["api"] = SessionStates(active=1, pinned=(_PINNED,))
    shown = _request(control, "GET", "/v1/endpoints/api", headers=AUTH).json()
    assert shown["sessions"] == 2
    assert shown["session_states"] == {"active": 1, "idle": 0, "parked": 0, "pinned": 1}
    assert shown["pinned_sessions"] == [
        {
            "client": "127.0.0.1",
            "application_name": "psql",
            "since": 1_800_000_000.0,
            "reason": "temporary tables",
        }
    ]
    assert shown["compute_other_sessions"] is None


def test_the_api_defaults_are_on_and_never(tmp_path: Path) -> None:
    control, _, _ = _control(tmp_path)
    created = _request(control, "POST", "/v1/endpoints", json={}, headers=AUTH).json()
    assert (created["park_sessions"], created["pinned_session_timeout_seconds"]) == (True, None)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"park_sessions": "true"}, "park_sessions: Input should be a valid boolean"),
        ({"park_sessions": 1}, "park_sessions: Input should be a valid boolean"),
        ({"park_sessions": None}, "park_sessions: Input should be a valid boolean"),
        (
            {"pinned_session_timeout_seconds": "60"},
            "pinned_session_timeout_seconds: must be a JSON number, not a string",
        ),
        (
            {"pinned_session_timeout_seconds": 0.01},
            "pinned_session_timeout_seconds: Input should be greater than or equal to 0.1",
        ),
    ],
)
@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/v1/endpoints"), ("PATCH", "/v1/endpoints/x")]
)
def test_the_api_refuses_what_is_not_a_json_bool_or_a_long_enough_number(
    tmp_path: Path, body: dict[str, Any], message: str, method: str, path: str
) -> None:
    control, _, _ = _control(tmp_path)
    response = _request(control, method, path, json=body, headers=AUTH)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["message"].startswith(message)


def test_patch_changes_the_fields_given_and_null_sets_the_default(tmp_path: Path) -> None:
    control, _, _ = _control(tmp_path)
    body = {"name": "p", "idle_timeout_seconds": 5, "pinned_session_timeout_seconds": 60}
    assert _request(control, "POST", "/v1/endpoints", json=body, headers=AUTH).status_code == 201
    changed = _request(
        control, "PATCH", "/v1/endpoints/p", json={"park_sessions": False}, headers=AUTH
    ).json()
    assert changed["park_sessions"] is False
    assert (changed["idle_timeout_seconds"], changed["pinned_session_timeout_seconds"]) == (5, 60)
    body = {"idle_timeout_seconds": None, "pinned_session_timeout_seconds": None}
    changed = _request(control, "PATCH", "/v1/endpoints/p", json=body, headers=AUTH).json()
    assert (changed["idle_timeout_seconds"], changed["pinned_session_timeout_seconds"]) == (
        300,
        None,
    )
    assert changed["park_sessions"] is False
    missing = _request(control, "PATCH", "/v1/endpoints/gone", json={}, headers=AUTH)
    assert missing.status_code == 404


# -- the CLI -------------------------------------------------------------------------------


def _args(*argv: str) -> argparse.Namespace:
    return _parser().parse_args(["endpoint", *argv])


def test_create_takes_the_session_flags() -> None:
    args = _args("create", "x", "--park-sessions", "false", "--pinned-session-timeout", "60")
    assert (args.park_sessions, args.pinned_session_timeout) == (False, 60)
    args = _args("create", "x")
    assert (args.park_sessions, args.pinned_session_timeout) == (None, None)


@pytest.mark.parametrize(
    "argv",
    [
        ("create", "--park-sessions", "yes"),
        ("create", "--pinned-session-timeout", "0"),
        ("update", "x", "--pinned-session-timeout", "forever"),
        ("update", "x", "--idle-timeout", "never"),
    ],
)
def test_session_flags_are_bounded(argv: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit):
        _args(*argv)


def test_update_sends_only_the_flags_given() -> None:
    assert setting_changes(_args("update", "x")) == {}
    assert setting_changes(_args("update", "x", "--park-sessions", "true")) == {
        "park_sessions": True
    }
    args = _args("update", "x", "--idle-timeout", "default", "--pinned-session-timeout", "never")
    assert setting_changes(args) == {
        "idle_timeout_seconds": None,
        "pinned_session_timeout_seconds": None,
    }
    args = _args("update", "x", "--idle-timeout", "5", "--pinned-session-timeout", "60")
    assert setting_changes(args) == {
        "idle_timeout_seconds": 5,
        "pinned_session_timeout_seconds": 60,
    }


def _endpoint(**fields: Any) -> Endpoint:
    data = {"name": "e", "state": "running", "connection_uri": "postgresql://app.e@h/app"}
    result: Endpoint = build(Endpoint, data | fields)
    return result


def test_get_shows_the_sessions_by_state_and_each_pinned_one() -> None:
    endpoint = _endpoint(
        sessions=3,
        session_states={"active": 1, "idle": 1, "parked": 0, "pinned": 1},
        pinned_sessions=[
            {"client": "127.0.0.1", "application_name": "psql", "since": 0, "reason": "listen"}
        ],
    )
    assert endpoint.pinned_sessions == (PinnedSession("127.0.0.1", "psql", 0, "listen"),)
    first, pinned = session_lines(endpoint)
    assert first == "sessions: 3 (1 active, 1 idle, 0 parked, 1 pinned)"
    assert pinned.startswith("  pinned since 19")
    assert pinned.endswith(": 127.0.0.1 app=psql reason=listen")


def test_get_prints_the_settings_as_the_flags_spell_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    print_endpoint(_endpoint(park_sessions=False, compute_other_sessions=0), None)
    lines = capsys.readouterr().out.splitlines()
    assert "park_sessions: false" in lines
    assert "pinned_session_timeout_seconds: -" in lines
    assert "sessions: 0 (0 active, 0 idle, 0 parked, 0 pinned)" in lines
    assert "compute_other_sessions: 0" in lines
    assert not any(line.startswith(("session_states", "pinned_sessions")) for line in lines)
