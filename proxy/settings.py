"""The one settings model: env prefix ``PGWAKE_``, an optional TOML file, CLI flags.

One name serves everywhere: ``idle_timeout`` is ``--idle-timeout``, ``PGWAKE_IDLE_TIMEOUT``
and TOML ``idle_timeout``. A flag beats env, env beats TOML, TOML beats the default.
Durations are in seconds. Nothing else in pgwake reads ``os.environ`` for configuration
(but ``pgwake.state_dir``, for the default state dir, and the stdlib-only client).
"""

from __future__ import annotations

import contextvars
import ipaddress
import typing
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_core import PydanticUndefined
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from pgwake.state_dir import default_path

__all__ = [
    "MAX_CPUS",
    "MAX_SECONDS",
    "MIN_CPUS",
    "MIN_IDLE_TIMEOUT_SECONDS",
    "MIN_LIFETIME_SECONDS",
    "Cpus",
    "IdleTimeout",
    "Lifetime",
    "Settings",
    "load_settings",
    "parse_host_port",
    "parse_memory",
    "shown_choices",
    "shown_default",
]

#: A shorter admin token would be guessable; generated ones have 43 characters.
_MIN_ADMIN_TOKEN_LENGTH = 16

# -- bounds shared by the settings, the HTTP API and the CLI ----------------------------------
# One rule each: the settings apply them to flags, env and TOML, ``pgwake.api.models`` to
# request bodies (strictly: no strings or booleans taken for numbers), ``pgwake endpoint
# create`` to its flags.

#: Ten years: the upper bound of every duration (lifetimes are stored as REAL unix times).
MAX_SECONDS: Final = 10 * 365 * 24 * 3600
#: The shortest idle timeout. The idle timer ticks every 50 ms at best, so a shorter one
#: would mean "suspend the moment the last session ends", not a timeout.
MIN_IDLE_TIMEOUT_SECONDS: Final = 0.1
#: The shortest TTL, unused-for time or TTL cap. The reaper deletes endpoints in sweeps,
#: every ``reaper_interval`` seconds, so a lifetime under a second is a slip, not a plan.
MIN_LIFETIME_SECONDS: Final = 1.0
#: Docker's bounds on a container's CPU limit: it refuses ``NanoCpus`` under 10**7.
MIN_CPUS: Final = 0.01
MAX_CPUS: Final = 512

#: Seconds without sessions before a compute is suspended.
IdleTimeout = Annotated[
    float, Field(ge=MIN_IDLE_TIMEOUT_SECONDS, le=MAX_SECONDS, allow_inf_nan=False)
]
#: Seconds an endpoint may live, or stay unused, before the reaper deletes it.
Lifetime = Annotated[float, Field(ge=MIN_LIFETIME_SECONDS, le=MAX_SECONDS, allow_inf_nan=False)]
#: A container's CPU limit, in CPUs.
Cpus = Annotated[float, Field(ge=MIN_CPUS, le=MAX_CPUS, allow_inf_nan=False)]

_toml_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar("toml", default=None)


def parse_host_port(value: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6); raise ``ValueError`` when malformed."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


_MEMORY_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
#: Postgres with shared_buffers of 32 MB does not start in less.
_MIN_MEMORY_BYTES = 64 * 1024**2


def parse_memory(value: str) -> int:
    """Bytes in a Docker-style size (``512m``, ``1g``, ``268435456``); ``ValueError`` if
    malformed or under 64 MiB."""
    text = value.strip().lower().removesuffix("ib").removesuffix("b")
    number, unit = (text[:-1], text[-1]) if text[-1:].isalpha() else (text, "")
    if not number.isdigit() or unit not in _MEMORY_UNITS:
        raise ValueError(f"expected a size such as 512m or 1g, got {value!r}")
    size = int(number) * _MEMORY_UNITS[unit]
    if size < _MIN_MEMORY_BYTES:
        raise ValueError(f"memory {value!r} is under the 64m a compute needs")
    return size


class Settings(BaseSettings):
    """pgwake configuration. Every field is documented for ``pgwake serve --help``."""

    model_config = SettingsConfigDict(
        env_prefix="PGWAKE_", extra="forbid", frozen=True, validate_default=True
    )

    state_dir: Path = Field(
        default_factory=default_path,
        description="Directory for the catalog, computes' data, TLS material and logs: "
        "`$XDG_DATA_HOME/pgwake` when `XDG_DATA_HOME` is set, else `/var/lib/pgwake` for "
        "root and `~/.local/share/pgwake` for other users.",
        json_schema_extra={"default_text": "per user"},
    )
    listen: str = Field("127.0.0.1:6432", description="Address the Postgres proxy listens on.")
    idle_timeout: IdleTimeout = Field(
        300.0,
        description="Seconds without sessions before a compute is suspended "
        f"(default for new endpoints; at least {MIN_IDLE_TIMEOUT_SECONDS:g}).",
    )
    wake_timeout: float = Field(
        30.0, gt=0, description="Seconds a client waits for a compute to start before 57P03."
    )
    startup_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a client has from connecting to finishing TLS, its startup "
        "packet and its SCRAM exchange.",
    )
    server_reuse_seconds: float = Field(
        30.0,
        ge=0,
        description="Seconds to keep a compute backend whose client ended cleanly, reset "
        "with DISCARD ALL, for the next client with the same role, database and startup "
        "parameters (no fork, no login on the compute); 0 = off. Kept backends never keep "
        "an endpoint awake.",
    )
    drain_timeout: float = Field(
        10.0,
        ge=0,
        description="Seconds to let sessions finish on SIGTERM before computes are "
        "suspended (which ends the remaining sessions with 57P01).",
    )
    stop_timeout: float = Field(
        20.0, gt=0, description="Seconds a compute gets for a fast shutdown before SIGQUIT."
    )
    metrics_listen: str = Field(
        "127.0.0.1:9187", description="Address of the Prometheus /metrics endpoint ('' = off)."
    )
    api_listen: str = Field(
        "127.0.0.1:8080",
        description="Address of the HTTP control plane (`/v1/...`, health, /metrics) ('' = off).",
    )
    admin_token: SecretStr | None = Field(
        None,
        description="Bearer token with full control of the HTTP API; generated once into "
        "`<state_dir>/admin-token` (mode 0600) if unset.",
    )
    reaper_interval: float = Field(
        5.0,
        gt=0,
        description="Seconds between sweeps that delete endpoints past their TTL or unused "
        "for their `delete_after_idle_seconds`.",
    )
    base_domain: str | None = Field(
        None,
        description="Domain under which the TLS SNI host names the endpoint "
        "(`<endpoint>.<base-domain>`).",
    )
    tls_cert: Path | None = Field(
        None, description="PEM certificate chain; a self-signed pair is generated if unset."
    )
    tls_key: Path | None = Field(None, description="PEM private key for --tls-cert.")
    pg_bindir: Path | None = Field(
        None, description="Directory holding postgres/initdb; found automatically if unset."
    )
    compute_user: str | None = Field(
        None,
        description="OS user computes run as when pgwake runs as root (default pgwake; "
        "created if missing).",
    )
    compute_backend: Literal["local", "docker"] = Field(
        "local", description="Backend of new endpoints unless `endpoint create --backend` says."
    )
    docker_image: str = Field(
        "postgres:17",
        description="Image of new docker endpoints; it must have `initdb` and `postgres` on "
        "PATH and a `postgres` user (official `postgres:NN` and deploy/docker images do).",
    )
    docker_memory: str = Field(
        "512m", description="Memory limit of new docker endpoints' containers (e.g. 256m, 1g)."
    )
    docker_cpus: Cpus = Field(
        1.0,
        description="CPU limit of new docker endpoints' containers "
        f"({MIN_CPUS:g} to {MAX_CPUS:g}).",
    )
    docker_ports: str = Field(
        "21000-21999",
        description="Loopback port range docker computes listen on (host networking); keep "
        "it outside the kernel's ephemeral range.",
    )
    require_tls: bool | None = Field(
        None,
        description="Refuse plaintext startups with 28000. Unset: on unless `listen` is a "
        "loopback address.",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Networks (CIDRs, comma-separated) whose connections start with a PROXY "
        "protocol v1/v2 header carrying the real client address.",
    )
    max_client_connections: int = Field(
        10_000, ge=1, description="Client sessions pgwake serves at once, all endpoints (53300)."
    )
    max_endpoint_connections: int = Field(
        250,
        ge=1,
        description="Client sessions one endpoint serves at once (53300); computes allow 300.",
    )
    max_unauthenticated_connections: int = Field(
        2000,
        ge=1,
        description="Connections still in TLS, startup or authentication at once, all "
        "clients (53300). They hold no session slot and keep no compute awake.",
    )
    max_unauthenticated_per_address: int = Field(
        200,
        ge=1,
        description="Connections still in TLS, startup or authentication at once from one "
        "client address (53300), so one address cannot crowd out the others.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level."
    )
    log_format: Literal["logfmt", "json"] = Field(
        "logfmt",
        description="Log lines as logfmt (key=value, quoted where needed) or one JSON "
        "object per line, with the same keys.",
    )

    @field_validator("docker_ports")
    @classmethod
    def _check_docker_ports(cls, value: str) -> str:
        first, sep, last = value.partition("-")
        if not (sep and first.isdigit() and last.isdigit() and 0 < int(first) <= int(last) < 65536):
            raise ValueError(f"expected FIRST-LAST ports, got {value!r}")
        return value

    @field_validator("docker_memory")
    @classmethod
    def _check_docker_memory(cls, value: str) -> str:
        parse_memory(value)
        return value

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_host_port(value)
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        for network in value:
            ipaddress.ip_network(network, strict=False)  # ValueError names the bad one
        return value

    @property
    def tls_required(self) -> bool:
        """Whether plaintext startups are refused (``require_tls``, or its default)."""
        if self.require_tls is not None:
            return self.require_tls
        host = self.listen_address[0]
        try:
            return not ipaddress.ip_address(host).is_loopback
        except ValueError:
            return host != "localhost"

    @property
    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(n, strict=False) for n in self.trusted_proxies)

    @field_validator("metrics_listen", "api_listen")
    @classmethod
    def _check_optional_listen(cls, value: str) -> str:
        if value:
            parse_host_port(value)
        return value

    @field_validator("admin_token")
    @classmethod
    def _check_admin_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < _MIN_ADMIN_TOKEN_LENGTH:
            raise ValueError(f"use at least {_MIN_ADMIN_TOKEN_LENGTH} characters")
        return value

    @field_validator("base_domain")
    @classmethod
    def _normalise_domain(cls, value: str | None) -> str | None:
        return value.strip(".").lower() or None if value else None

    @property
    def listen_address(self) -> tuple[str, int]:
        return parse_host_port(self.listen)

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        return parse_host_port(self.metrics_listen) if self.metrics_listen else None

    @property
    def api_address(self) -> tuple[str, int] | None:
        return parse_host_port(self.api_listen) if self.api_listen else None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_path = _toml_file.get()
        if toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from flags (``overrides``), env, then ``config_file``.

    Raises ``pydantic.ValidationError`` on a bad value and ``FileNotFoundError`` when
    ``config_file`` does not exist.
    """
    if config_file is not None and not config_file.is_file():
        raise FileNotFoundError(f"config file not found: {config_file}")
    token = _toml_file.set(config_file)
    try:
        given = {key: value for key, value in overrides.items() if value is not None}
        return Settings(**given)
    finally:
        _toml_file.reset(token)


def shown_default(name: str, *, here: bool = False) -> str:
    """Setting ``name``'s default as README's table shows it, or with ``here`` as ``serve
    --help`` does (this machine's value where it depends on the user, e.g. the state dir).
    ``unset`` when there is none, ``none`` for an empty list."""
    field = Settings.model_fields[name]
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        extra = field.json_schema_extra
        if not here and isinstance(extra, dict) and isinstance(extra.get("default_text"), str):
            return str(extra["default_text"])
        return str(value) if value else "none"
    if field.default in (None, PydanticUndefined):
        return "unset"
    return str(field.default)


def shown_choices(name: str) -> tuple[str, ...] | None:
    """The values setting ``name`` takes when they are few (booleans, ``Literal`` names),
    for ``--help``; ``None`` for the others."""
    annotation = Settings.model_fields[name].annotation
    if annotation is bool or bool in typing.get_args(annotation):  # also ``bool | None``
        return ("true", "false")
    if typing.get_origin(annotation) is Literal:
        return tuple(str(value) for value in typing.get_args(annotation))
    return None


def settings_table() -> str:
    """The Markdown table of every setting, as README shows it (a test keeps them equal)."""
    lines = ["| setting | env | default | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = shown_default(name)
        if default not in ("unset", "none", "per user"):
            default = f"`{default}`"
        lines.append(
            f"| `{name}` / `--{name.replace('_', '-')}` | `PGWAKE_{name.upper()}` "
            f"| {default} | {field.description} |"
        )
    return "\n".join(lines)
