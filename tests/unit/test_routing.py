"""routing.resolve(): the endpoint from SNI, options or the user name, and what the compute
sees; the IP allow-list."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from pgwake.edge.routing import (
    Route,
    address_allowed,
    compute_parameters,
    resolve,
    split_options,
)
from pgwake.endpoint.names import EndpointName, is_valid_endpoint_name
from pgwake.protocol.errors import InvalidCatalogName, SqlclientUnableToEstablishSqlconnection
from pgwake.protocol.messages import StartupMessage

EXISTING = frozenset({"demo", "other", "db"})
BASE = "pg.example.com"


def expect(endpoint: str, role: str, options: str | None, source: str) -> Route:
    return Route(EndpointName(endpoint), role, options, source)


def exists(name: str) -> bool:
    return name in EXISTING


def route(
    user: str = "alice",
    options: str | None = None,
    server_name: str | None = None,
    base_domain: str | None = None,
) -> Route:
    return resolve(
        user=user,
        options=options,
        server_name=server_name,
        base_domain=base_domain,
        exists=exists,
    )


# -- SNI -----------------------------------------------------------------------------------


def test_sni_under_base_domain() -> None:
    assert route(server_name="demo.pg.example.com", base_domain=BASE) == expect(
        "demo", "alice", None, "sni"
    )


def test_sni_under_base_domain_routes_unknown_endpoints_too() -> None:
    # The catalog, not routing, tells the client that "ghost" does not exist.
    assert route(server_name="ghost.pg.example.com", base_domain=BASE).endpoint == "ghost"


def test_sni_is_case_insensitive_and_ignores_the_root_dot() -> None:
    assert route(server_name="DEMO.PG.Example.com.", base_domain=BASE).endpoint == "demo"


@pytest.mark.parametrize(
    "server_name",
    ["demo.elsewhere.com", "pg.example.com", "demo.x.pg.example.com", "localhost", ""],
)
def test_sni_outside_base_domain_does_not_route(server_name: str) -> None:
    with pytest.raises(SqlclientUnableToEstablishSqlconnection):
        route(server_name=server_name, base_domain=BASE)


def test_sni_without_base_domain_routes_an_existing_first_label() -> None:
    assert route(server_name="demo.local") == expect("demo", "alice", None, "sni")


@pytest.mark.parametrize("server_name", ["localhost", "demo", "ghost.example.com"])
def test_sni_without_base_domain_ignores_other_hosts(server_name: str) -> None:
    # A single label, or a first label that is no endpoint, names nothing.
    with pytest.raises(SqlclientUnableToEstablishSqlconnection):
        route(server_name=server_name)


def test_sni_without_base_domain_falls_back_to_user() -> None:
    assert route(user="alice.other", server_name="ghost.example.com") == expect(
        "other", "alice", None, "user"
    )


# -- options -------------------------------------------------------------------------------


def test_options_endpoint() -> None:
    assert route(options="endpoint=demo") == expect("demo", "alice", None, "options")


def test_options_endpoint_is_removed_and_the_rest_kept() -> None:
    result = route(options=r"-c search_path=a\ b endpoint=demo --work_mem=4MB")
    assert result.endpoint == "demo"
    assert result.options == r"-c search_path=a\ b --work_mem=4MB"
    assert split_options(result.options) == ["-c", "search_path=a b", "--work_mem=4MB"]


def test_options_escapes_survive_the_rewrite() -> None:
    result = route(options=r"endpoint=demo -c application_name=back\\slash\ x")
    assert result.options is not None
    assert split_options(result.options) == ["-c", "application_name=back\\slash x"]


def test_options_without_endpoint_route_nothing_but_are_kept() -> None:
    result = route(user="alice.demo", options="-c geqo=off")
    assert result == expect("demo", "alice", "-c geqo=off", "user")


def test_options_same_endpoint_twice() -> None:
    assert route(options="endpoint=demo endpoint=demo").endpoint == "demo"


def test_options_two_endpoints_conflict() -> None:
    with pytest.raises(InvalidCatalogName) as info:
        route(options="endpoint=demo endpoint=other")
    assert info.value.sqlstate == "3D000"
    assert info.value.hint


# -- user name -----------------------------------------------------------------------------


def test_user_suffix() -> None:
    assert route(user="alice.demo") == expect("demo", "alice", None, "user")


def test_user_suffix_takes_the_last_dot() -> None:
    assert route(user="first.last.demo") == expect("demo", "first.last", None, "user")


def test_user_suffix_need_not_exist() -> None:
    # Alone, the user name routes; the catalog reports an unknown endpoint afterwards.
    assert route(user="alice.ghost").endpoint == "ghost"


@pytest.mark.parametrize("user", ["alice", ".demo", "alice.Demo", "alice.", "alice.de_mo"])
def test_user_without_an_endpoint_suffix(user: str) -> None:
    with pytest.raises(SqlclientUnableToEstablishSqlconnection):
        route(user=user)


def test_dotted_role_kept_when_another_source_routes() -> None:
    # "first.last" is a role, not role "first" on endpoint "last": "last" is no endpoint.
    assert route(user="first.last", options="endpoint=demo") == expect(
        "demo", "first.last", None, "options"
    )
    assert route(user="first.last", server_name="demo.pg.example.com", base_domain=BASE) == (
        expect("demo", "first.last", None, "sni")
    )


def test_user_suffix_matching_the_other_source_is_stripped() -> None:
    assert route(user="alice.demo", options="endpoint=demo") == expect(
        "demo", "alice", None, "options"
    )
    assert route(user="alice.demo", server_name="demo.pg.example.com", base_domain=BASE) == (
        expect("demo", "alice", None, "sni")
    )


def test_user_suffix_naming_another_existing_endpoint_conflicts() -> None:
    with pytest.raises(InvalidCatalogName) as info:
        route(user="alice.other", options="endpoint=demo")
    assert info.value.sqlstate == "3D000"
    with pytest.raises(InvalidCatalogName):
        route(user="alice.other", server_name="demo.pg.example.com", base_domain=BASE)


# -- precedence and conflicts --------------------------------------------------------------


def test_sni_beats_options_when_they_agree() -> None:
    result = route(options="endpoint=demo", server_name="demo.pg.example.com", base_domain=BASE)
    assert result == expect("demo", "alice", None, "sni")


def test_sni_and_options_conflict() -> None:
    with pytest.raises(InvalidCatalogName) as info:
        route(options="endpoint=other", server_name="demo.pg.example.com", base_domain=BASE)
    assert info.value.sqlstate == "3D000"
    assert info.value.detail is not None
    assert "demo" in info.value.detail
    assert "other" in info.value.detail


def test_options_beat_user_suffix_that_is_no_endpoint() -> None:
    assert route(user="alice.ghost", options="endpoint=demo").role == "alice.ghost"


# -- no endpoint, bad names ----------------------------------------------------------------


def test_no_endpoint_is_08004_with_a_hint() -> None:
    with pytest.raises(SqlclientUnableToEstablishSqlconnection) as info:
        route(user="alice", options="-c geqo=off", server_name="localhost")
    error = info.value
    assert error.sqlstate == "08004"
    assert error.hint is not None
    # ARCHITECTURE.md: the hint names all three ways.
    assert "options=endpoint%3D" in error.hint
    assert "<role>.<endpoint>" in error.hint
    assert "<base-domain>" in error.hint


@pytest.mark.parametrize(
    ("options", "server_name"),
    [
        ("endpoint=Demo", None),
        ("endpoint=de_mo", None),
        ("endpoint=", None),
        ("endpoint=-demo", None),
        (f"endpoint={'a' * 64}", None),
        (None, "de_mo.pg.example.com"),
        (None, "-x.pg.example.com"),
    ],
)
def test_invalid_endpoint_name_is_3d000(options: str | None, server_name: str | None) -> None:
    with pytest.raises(InvalidCatalogName) as info:
        route(options=options, server_name=server_name, base_domain=BASE)
    assert info.value.sqlstate == "3D000"


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("demo", True),
        ("a", True),
        ("0", True),
        ("a-1", True),
        ("a" * 63, True),
        ("a" * 64, False),
        ("", False),
        ("-a", False),
        ("a-", False),
        ("A", False),
        ("a.b", False),
        ("a_b", False),
    ],
)
def test_is_valid_endpoint_name(name: str, valid: bool) -> None:
    assert is_valid_endpoint_name(name) is valid


# -- split_options against Postgres's pg_split_opts -----------------------------------------

_C_SPACE = " \t\n\v\f\r"  # isspace() in the C locale, as the backend runs it


def pg_split_opts(options: str) -> list[str]:
    """A line-by-line port of ``pg_split_opts`` (src/backend/utils/init/postinit.c)."""
    argv: list[str] = []
    position, end = 0, len(options)
    while position < end:
        word: list[str] = []
        last_was_escape = False
        while position < end and options[position] in _C_SPACE:
            position += 1
        if position == end:
            break
        while position < end:
            char = options[position]
            if char in _C_SPACE and not last_was_escape:
                break
            if not last_was_escape and char == "\\":
                last_was_escape = True
            else:
                last_was_escape = False
                word.append(char)
            position += 1
        argv.append("".join(word))
    return argv


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ("", []),
        ("   ", []),
        ("-c geqo=off", ["-c", "geqo=off"]),
        (r"-c search_path=a\ b", ["-c", "search_path=a b"]),
        ("  -c\tgeqo=off \n", ["-c", "geqo=off"]),
        (r"a\\b", ["a\\b"]),
        (r"a\b", ["ab"]),
        ("a\\", ["a"]),
        ("\\", [""]),
        (r"\ ", [" "]),
        (r"x\ \ y z", ["x  y", "z"]),
        ("--search_path=x", ["--search_path=x"]),
    ],
)
def test_split_options_examples(options: str, words: list[str]) -> None:
    assert pg_split_opts(options) == words
    assert split_options(options) == words


# ASCII, with every C-locale space and plenty of backslashes.
_ascii_options = st.lists(
    st.sampled_from([*"ab=-_ \\\t\n\v\f\r", "endpoint=demo", "-c", " endpoint=demo "])
).map("".join)


@given(_ascii_options)
def test_split_options_matches_pg_split_opts(options: str) -> None:
    assert split_options(options) == pg_split_opts(options)


@given(_ascii_options)
def test_rewritten_options_split_to_the_same_words(options: str) -> None:
    # What the compute splits out of the rewritten options is what the client meant,
    # minus endpoint=.
    full = f"{options} endpoint=demo"
    words = pg_split_opts(full)
    assume(all(words))  # an empty word (a lone trailing backslash) cannot be re-joined
    endpoint_words = {word for word in words if word.startswith("endpoint=")}
    assume(endpoint_words == {"endpoint=demo"})
    kept = [word for word in words if not word.startswith("endpoint=")]
    result = route(options=full)
    assert result.endpoint == "demo"
    if kept:
        assert result.options is not None
        assert pg_split_opts(result.options) == kept
    else:
        assert result.options is None


# -- the allow-list and the compute's startup parameters ----------------------------------


@pytest.mark.parametrize(
    ("host", "cidrs", "allowed"),
    [
        ("192.0.2.7", (), True),  # no list: everyone
        ("local", (), True),
        ("192.0.2.7", ("192.0.2.0/24",), True),
        ("192.0.2.7", ("198.51.100.0/24", "192.0.2.7"), True),
        ("198.51.100.1", ("192.0.2.0/24",), False),
        ("2001:db8::1", ("2001:db8::/32",), True),
        ("2001:db8::1", ("192.0.2.0/24",), False),
        ("local", ("192.0.2.0/24",), False),  # a unix socket has no address to allow
    ],
)
def test_address_allowed(host: str, cidrs: tuple[str, ...], allowed: bool) -> None:
    assert address_allowed(host, cidrs) is allowed


def test_compute_parameters_take_the_routes_role_and_options() -> None:
    startup = StartupMessage(
        3,
        0,
        {
            "user": "alice.demo",
            "database": "db",
            "options": "endpoint=demo -c search_path=app",
            "_pq_.feature": "on",
            "application_name": "psql",
        },
    )
    parameters = compute_parameters(startup, expect("demo", "alice", "-c search_path=app", "user"))
    assert parameters == {
        "user": "alice",
        "database": "db",
        "application_name": "psql",
        "options": "-c search_path=app",
    }
    assert next(iter(parameters)) == "user"
    without = compute_parameters(startup, expect("demo", "alice", None, "options"))
    assert "options" not in without
