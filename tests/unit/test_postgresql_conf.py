"""One postgresql.conf source for every backend: the blocks the local and docker backends
append carry every common setting, and differ only in where the compute listens."""

from __future__ import annotations

from pgwake.compute import docker_spec, local_template
from pgwake.compute.postgresql_conf import COMMON_SETTINGS, render


def _settings(block: str) -> dict[str, str]:
    """``name = value`` lines of a postgresql.conf block (comments and blanks skipped)."""
    settings = {}
    for line in block.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            assert name.strip() not in settings, f"{name.strip()} set twice"
            settings[name.strip()] = value.strip()
    return settings


def test_both_backends_get_every_common_setting() -> None:
    local_conf = _settings(local_template._TEMPLATE_CONF)
    docker_conf = _settings(docker_spec._CONF)
    for name, value in COMMON_SETTINGS.items():
        assert (name, local_conf.get(name)) == (name, value)
        assert (name, docker_conf.get(name)) == (name, value)
    # Beyond those, only where the compute listens differs.
    assert local_conf.keys() - COMMON_SETTINGS.keys() == {
        "listen_addresses",
        "unix_socket_permissions",
    }
    assert docker_conf.keys() - COMMON_SETTINGS.keys() == set()  # on its command line


def test_a_local_compute_listens_on_its_private_socket_only() -> None:
    conf = _settings(local_template._TEMPLATE_CONF)
    assert conf["listen_addresses"] == "''"
    assert conf["unix_socket_permissions"] == "0700"


def test_render_leaves_unset_listening_settings_out() -> None:
    assert _settings(render()) == COMMON_SETTINGS
    assert _settings(render(listen_addresses="'127.0.0.1'")) == {
        "listen_addresses": "'127.0.0.1'",
        **COMMON_SETTINGS,
    }
