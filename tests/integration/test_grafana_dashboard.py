"""deploy/grafana/pgwake-dashboard.json asks only for what pgwake exports.

A real pgwake serves a few connections (a wake, a kept and reused backend, a cancel, a
wrong password, an unknown endpoint, a connection refused before authentication, a
suspend, a delete), then its /metrics is scraped. Every metric a panel's query names must
be in that scrape, with every label the query selects, groups by or shows in its legend,
and every label value it matches exactly.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.pgwake_fixture import ADMIN_TOKEN, PASSWORD, serve, wait_for

ROOT = Path(__file__).resolve().parent.parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "pgwake-dashboard.json"
#: Sample name -> label name -> the values seen.
Scrape = dict[str, dict[str, set[str]]]

_METRIC = re.compile(r"\bpgwake_\w+")
_SELECTOR = re.compile(r"\b(pgwake_\w+)\{([^}]*)\}")
_MATCHER = re.compile(r'\s*(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"\s*')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def _serve_a_few_connections(port: int, api: httpx.Client) -> None:
    created = api.post("/v1/endpoints", json={"name": "seen", "password": PASSWORD})
    assert created.status_code == 201, created.text
    uri = created.json()["connection_uri"]
    with psycopg.connect(uri, sslmode="disable", autocommit=True, connect_timeout=60) as conn:
        conn.execute("select 1")
        timer = threading.Timer(0.5, conn.cancel_safe)
        timer.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("select pg_sleep(30)")
        timer.join()
    time.sleep(0.5)  # the backend is reset and kept in the background
    with psycopg.connect(uri, sslmode="disable", connect_timeout=60) as conn:
        conn.execute("select 2")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(uri.replace(PASSWORD, "wrong-password"), sslmode="disable").close()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(uri.replace("app.seen", "app.nowhere"), sslmode="disable").close()
    # One connection that never logs in holds this address's only unauthenticated slot.
    with (
        socket.create_connection(("127.0.0.1", port)),
        pytest.raises(psycopg.OperationalError, match="still logging in"),
    ):
        psycopg.connect(uri, sslmode="disable", connect_timeout=10).close()
    assert api.post("/v1/endpoints/seen/suspend").json()["state"] == "suspended"
    api.post("/v1/endpoints", json={"name": "gone"}).raise_for_status()
    assert api.delete("/v1/endpoints/gone").status_code == 204


@pytest.fixture(scope="module")
def scrape() -> Iterator[Scrape]:
    with serve(max_unauthenticated_per_address="1") as server:
        with httpx.Client(
            base_url=server.api_url,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=60,
        ) as api:
            _serve_a_few_connections(server.port, api)
        wait_for(
            lambda: server.metric("pgwake_server_reuse_total", endpoint="seen", event="reused")
        )
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        seen: Scrape = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = seen.setdefault(sample.name, {})
                for label, value in sample.labels.items():
                    labels.setdefault(label, set()).add(value)
        yield seen
        assert "Traceback" not in server.log_text(), server.log_text()


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _panels() -> list[dict[str, Any]]:
    return [panel for panel in _dashboard()["panels"] if panel["type"] != "row"]


def _queries() -> list[tuple[str, str, str]]:
    """(where, expr, legend) of every query: the panels' targets and the variables'."""
    queries = [
        (f"panel {panel['title']!r} {target['refId']}", target["expr"], target["legendFormat"])
        for panel in _panels()
        for target in panel["targets"]
    ]
    for variable in _dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            match = re.fullmatch(r"label_values\((pgwake_\w+), (\w+)\)", query)
            assert match, query
            # label_values(m, l) asks for m's label l: the same as "m" grouped by l.
            expr = f"max by ({match[2]}) ({match[1]})"
            queries.append((f"variable {variable['name']}", expr, ""))
    return queries


def _problems(expr: str, legend: str, scrape: Scrape) -> list[str]:
    expr = expr.replace("$__rate_interval", "5m").replace("$__range", "1h")
    names = _METRIC.findall(expr)
    if not names:
        return ["names no pgwake metric"]
    missing = [name for name in names if name not in scrape]
    if missing:
        return [f"{name} is not exported" for name in missing]
    available = set().union(*(scrape[name] for name in names))
    problems = []
    for name, matchers in _SELECTOR.findall(expr):
        for matcher in filter(None, matchers.split(",")):
            parsed = _MATCHER.fullmatch(matcher)
            if parsed is None:
                problems.append(f"cannot read the matcher {matcher!r}")
                continue
            label, operator, value = parsed.groups()
            if label not in scrape[name]:
                problems.append(f"{name} has no label {label!r}")
            elif operator == "=" and value not in scrape[name][label]:
                problems.append(f"{name} never has {label}={value!r}")
    grouped: set[str] = set()
    for labels in _GROUPING.findall(expr):
        grouped |= {label.strip() for label in labels.split(",") if label.strip()}
    problems += [
        f"groups by {label!r}, a label of none of {names}" for label in grouped - available
    ]
    shown = set(_LEGEND.findall(legend))
    problems += [
        f"legend shows {label!r}, which the result has not"
        for label in shown
        if label not in (grouped or available)
    ]
    return problems


def test_every_query_asks_for_exported_metrics_and_labels(scrape: Scrape) -> None:
    problems = [
        f"{where}: {problem}"
        for where, expr, legend in _queries()
        for problem in _problems(expr, legend, scrape)
    ]
    assert problems == []


def test_the_dashboard_covers_what_operators_look_at() -> None:
    """Wakes and their latency, endpoint states, sessions, unauthenticated connections,
    bytes, errors by SQLSTATE, server reuse, and parked and pinned sessions each have a
    panel."""
    exprs = " ".join(expr for _, expr, _ in _queries())
    for metric in (
        "pgwake_wakes_total",
        "pgwake_wake_duration_seconds_bucket",
        "pgwake_endpoint_state",
        "pgwake_client_connections_active",
        "pgwake_unauthenticated_connections",
        "pgwake_unauthenticated_refused_total",
        "pgwake_bytes_relayed_total",
        "pgwake_client_errors_total",
        "pgwake_server_reuse_total",
        "pgwake_client_sessions",
        "pgwake_pinned_sessions",
        "pgwake_parks_total",
        "pgwake_reattaches_total",
        "pgwake_reattach_duration_seconds_bucket",
    ):
        assert metric in exprs, metric
    assert "sum by (sqlstate, kind)" in exprs


def test_the_dashboard_is_well_formed_for_import() -> None:
    dashboard = _dashboard()
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in _panels():
        assert panel["targets"], panel["title"]
        assert panel["description"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
