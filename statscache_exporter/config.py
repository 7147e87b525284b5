"""Typed configuration, validated once at load.

The YAML file maps onto the dataclasses below. Every mistake is a :class:`ConfigError` that
names the key's path (``store.flush_interval``, ``sources[0].type``) and, where there are any,
the valid choices. Strings may hold ``${NAME}`` (or ``${NAME:-default}``) to take a value, such
as a password, from the environment. Durations are written ``500ms``, ``1s``, ``5m``, ``48h``,
``7d``, ``2w`` or as a number of seconds.

``config.yaml`` at the top of the repository documents every key; a test keeps the two in step.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

import yaml

from statscache_exporter.message import DEFAULT_ENVIRONMENTS

DEFAULT_PATH = "config.yaml"
ENV_VAR = "STATSCACHE_CONFIG"
SECRET_KEYS = re.compile(r"(password|passwd|token|secret|key_password)$", re.IGNORECASE)


class ConfigError(ValueError):
    """A config mistake; ``str()`` starts with the key's path."""


# --- the schema ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreConfig:
    path: str = "var/statscache.sqlite"
    flush_interval: timedelta = timedelta(seconds=1)
    max_batch: int = 20_000
    dedup_window: timedelta = timedelta(hours=48)
    dedup_messages: int = 1_000_000
    synchronous: Literal["normal", "full"] = "full"
    retention: dict[str, timedelta | None] = field(
        default_factory=lambda: {
            "1s": timedelta(days=2),
            "1m": timedelta(days=30),
            "1h": timedelta(days=400),
            "1d": None,
        }
    )


@dataclass(frozen=True)
class AggregationConfig:
    interval: timedelta = timedelta(seconds=1)
    resolutions: tuple[timedelta, ...] = (
        timedelta(minutes=1),
        timedelta(hours=1),
        timedelta(days=1),
    )


@dataclass(frozen=True)
class MessagesConfig:
    environments: tuple[str, ...] = tuple(sorted(DEFAULT_ENVIRONMENTS))
    schemas: bool = True
    max_clock_skew: timedelta = timedelta(hours=1)


@dataclass(frozen=True)
class ReplaySourceConfig:
    type: Literal["replay"]
    paths: tuple[str, ...]
    name: str = ""


@dataclass(frozen=True)
class ReconnectConfig:
    """Waits between reconnection attempts: doubling from ``initial`` to ``max``, jittered."""

    initial: timedelta = timedelta(seconds=1)
    max: timedelta = timedelta(minutes=2)


@dataclass(frozen=True)
class AmqpTlsConfig:
    """Client TLS for amqps:// (empty: the system CA store and no client certificate)."""

    ca_cert: str = ""
    certfile: str = ""
    keyfile: str = ""


@dataclass(frozen=True)
class BindingConfig:
    exchange: str = "amq.topic"
    routing_keys: tuple[str, ...] = ("#",)


@dataclass(frozen=True)
class FedoraMessagingSourceConfig:
    """The AMQP bus Fedora runs today, consumed like fedora-messaging does."""

    type: Literal["fedora-messaging"]
    name: str = ""
    #: "fedora-public": Fedora's public read-only broker with the certificates that ship with
    #: the fedora-messaging package, and a server-named queue; the keys below override it
    profile: Literal["none", "fedora-public"] = "none"
    amqp_url: str = ""
    #: a durable named queue that outlives the exporter; empty: a server-named exclusive queue
    queue: str = ""
    bindings: tuple[BindingConfig, ...] = (BindingConfig(),)
    tls: AmqpTlsConfig = field(default_factory=AmqpTlsConfig)
    #: unacknowledged messages the broker may send ahead; a message is acknowledged after the
    #: flush that stored it, so this must exceed what arrives in one flush interval
    prefetch: int = 2000
    reconnect: ReconnectConfig = field(default_factory=ReconnectConfig)


@dataclass(frozen=True)
class FedmsgSourceConfig:
    """The ZeroMQ bus (fedmsg): SUB sockets connected to publishers' endpoints."""

    type: Literal["fedmsg"]
    name: str = ""
    #: Fedora's hub (retired from production in February 2025)
    endpoints: tuple[str, ...] = ("tcp://hub.fedoraproject.org:9940",)
    #: topic prefixes to subscribe to; "" is everything
    topics: tuple[str, ...] = ("",)
    validate_signatures: bool = False
    #: messages ZeroMQ queues per socket before dropping (0: unlimited)
    high_water_mark: int = 10000
    tcp_keepalive: bool = True
    tcp_keepalive_idle: timedelta = timedelta(seconds=60)
    tcp_keepalive_interval: timedelta = timedelta(seconds=10)
    tcp_keepalive_count: int = 3
    reconnect: ReconnectConfig = field(default_factory=ReconnectConfig)


@dataclass(frozen=True)
class DatagrepperSourceConfig:
    """Polling datagrepper's /raw, for users without access to a bus."""

    type: Literal["datagrepper"]
    name: str = ""
    url: str = "https://apps.fedoraproject.org/datagrepper"
    interval: timedelta = timedelta(seconds=10)
    #: each poll looks this far back again, for messages datagrepper stored late
    overlap: timedelta = timedelta(minutes=2)
    #: only these categories (empty: all)
    categories: tuple[str, ...] = ()
    rows_per_page: int = 100
    timeout: timedelta = timedelta(seconds=60)
    reconnect: ReconnectConfig = field(default_factory=ReconnectConfig)


SourceConfig = (
    ReplaySourceConfig | FedoraMessagingSourceConfig | FedmsgSourceConfig | DatagrepperSourceConfig
)
#: ``type`` value → source config class
SOURCE_TYPES: dict[str, type] = {
    "replay": ReplaySourceConfig,
    "fedora-messaging": FedoraMessagingSourceConfig,
    "fedmsg": FedmsgSourceConfig,
    "datagrepper": DatagrepperSourceConfig,
}


@dataclass(frozen=True)
class PluginConfig:
    enabled: bool = True
    backlog_delta: timedelta | None = None
    #: series per metric before new label values overflow (default: prometheus.max_series)
    max_series: int | None = None
    #: hide a series from /metrics after this long unchanged (default: prometheus.series_ttl)
    series_ttl: timedelta | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TlsConfig:
    cert_file: str = ""
    key_file: str = ""


@dataclass(frozen=True)
class BasicAuthConfig:
    username: str = ""
    password: str = ""


@dataclass(frozen=True)
class ApiConfig:
    default_rows_per_page: int = 100
    max_rows_per_page: int = 1000
    #: /api/ and /api/<ident> answer in statscache's own shapes (arrays of idents and of flat
    #: rows) instead of this exporter's
    statscache_shapes: bool = False


@dataclass(frozen=True)
class HttpConfig:
    enabled: bool = True
    address: str = "127.0.0.1"
    port: int = 9819
    tls: TlsConfig = field(default_factory=TlsConfig)
    basic_auth: BasicAuthConfig = field(default_factory=BasicAuthConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    #: threads that compute answers (requests are read and answers written on the event loop)
    workers: int = 8
    #: a connection that has not sent a whole request head this long after it opened or after
    #: its last answer is closed
    idle_timeout: timedelta = timedelta(seconds=15)
    #: a connection that sends nothing for this long is closed, even while its answer is made
    read_timeout: timedelta = timedelta(seconds=60)
    tls_handshake_timeout: timedelta = timedelta(seconds=10)
    #: request line and headers together
    max_header_bytes: int = 65536
    max_body_bytes: int = 65536


@dataclass(frozen=True)
class PrometheusConfig:
    prefix: str = "statscache_"
    created_series: bool = False
    max_series: int = 10_000
    overflow_value: str = "__other__"
    series_ttl: timedelta | None = None


@dataclass(frozen=True)
class InfluxConfig:
    enabled: bool = False
    mode: Literal["v1", "v2"] = "v1"
    url: str = "http://127.0.0.1:8086"
    # v1: /write
    database: str = "statscache"
    retention_policy: str = ""
    username: str = ""
    password: str = ""
    create_database: bool = False
    # v2: influxdb-client's write API
    org: str = ""
    bucket: str = ""
    token: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    batch_size: int = 5000
    max_pending: int = 2_000_000
    timeout: timedelta = timedelta(seconds=10)
    retry_initial: timedelta = timedelta(seconds=1)
    retry_max: timedelta = timedelta(seconds=60)
    shutdown_timeout: timedelta = timedelta(seconds=10)


@dataclass(frozen=True)
class LoggingConfig:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


@dataclass(frozen=True)
class BackfillConfig:
    """Fetching from datagrepper what the live sources missed (the gap filler)."""

    #: `run` backfills on start and after a live source's outage
    enabled: bool = True
    url: str = "https://apps.fedoraproject.org/datagrepper"
    rows_per_page: int = 100
    #: requests to datagrepper at once (a window's spans and the next windows')
    concurrency: int = 4
    #: time covered by one window (its requests are sized by datagrepper's answers)
    window: timedelta = timedelta(minutes=10)
    timeout: timedelta = timedelta(seconds=60)
    #: attempts per window before the backfill stops with an error (the next start retries)
    retries: int = 8
    retry_initial: timedelta = timedelta(seconds=1)
    retry_max: timedelta = timedelta(minutes=1)
    #: read again before the checkpoint, and past the live sources' start
    overlap: timedelta = timedelta(minutes=5)
    #: no message before this (ISO 8601 with a time zone, e.g. 2024-01-01T00:00:00Z; "": none)
    epoch: str = ""
    #: on a first start (an empty store): how far back to fetch (none: nothing)
    initial_backfill: timedelta | None = None
    verify_tls: bool = True
    user_agent: str = "statscache-exporter (+https://github.com/fedora-infra/statscache)"
    #: read missed ranges from this datanommer database (postgresql://user@host/db) instead
    #: of datagrepper; "": datagrepper (the ``datanommer`` section tunes the reading)
    datanommer_url: str = ""

    def epoch_time(self) -> float | None:
        """``epoch`` as epoch seconds, None if unset."""
        if not self.epoch:
            return None
        when = datetime.fromisoformat(self.epoch.replace("Z", "+00:00"))
        return when.timestamp()


@dataclass(frozen=True)
class DatanommerConfig:
    """Reading a datanommer database: ``statscache-exporter import --datanommer URL`` and the
    gap filler with ``backfill.datanommer_url``."""

    #: rows one query reads (keyset paging: each batch starts after the last row read)
    batch_size: int = 5000
    #: the password when the URL has none (e.g. ${DATANOMMER_PASSWORD}); libpq's PGPASSWORD
    #: and ~/.pgpass work too
    password: str = ""
    connect_timeout: timedelta = timedelta(seconds=10)
    #: a query still running after this long is cancelled by the server (and tried again)
    statement_timeout: timedelta = timedelta(minutes=5)
    #: attempts of one batch (with a new connection each) before the import stops
    retries: int = 8
    retry_initial: timedelta = timedelta(seconds=1)
    retry_max: timedelta = timedelta(minutes=1)


@dataclass(frozen=True)
class Config:
    store: StoreConfig = field(default_factory=StoreConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    messages: MessagesConfig = field(default_factory=MessagesConfig)
    sources: tuple[SourceConfig, ...] = ()
    plugins: dict[str, PluginConfig] = field(default_factory=dict)
    http: HttpConfig = field(default_factory=HttpConfig)
    prometheus: PrometheusConfig = field(default_factory=PrometheusConfig)
    influxdb: InfluxConfig = field(default_factory=InfluxConfig)
    backfill: BackfillConfig = field(default_factory=BackfillConfig)
    datanommer: DatanommerConfig = field(default_factory=DatanommerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def resolutions(self) -> tuple[int, ...]:
        """Every bucket size in whole seconds, finest first."""
        sizes = {self.aggregation.interval, *self.aggregation.resolutions}
        return tuple(sorted(int(d.total_seconds()) for d in sizes))

    def retention_seconds(self) -> dict[int, float | None]:
        """Resolution in seconds → how long its buckets are kept (None: forever)."""
        keep: dict[int, float | None] = {res: None for res in self.resolutions()}
        for key, duration in self.store.retention.items():
            res = int(parse_duration(key, f"store.retention.{key}").total_seconds())
            keep[res] = duration.total_seconds() if duration is not None else None
        return keep


# --- loading -------------------------------------------------------------------------------


def config_path(cli_value: str | None) -> Path:
    """``--config`` if given, else ``$STATSCACHE_CONFIG``, else ``./config.yaml``."""
    return Path(cli_value or os.environ.get(ENV_VAR) or DEFAULT_PATH)


def load(path: str | Path) -> Config:
    """Read and validate a config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    return from_dict(data if data is not None else {})


def from_dict(data: Any) -> Config:
    """Validate an already-parsed config mapping. ``${NAME}`` references are expanded here,
    once, before any value is checked: an expanded value is never expanded again."""
    config: Config = build(Config, _expand_tree(data, ""), "")
    config = _name_sources(config)
    _check(config)
    return config


def _name_sources(config: Config) -> Config:
    """Give every unnamed source its default name, type and position (``replay0``)."""
    named = tuple(
        s if s.name else dataclasses.replace(s, name=f"{s.type}{i}")
        for i, s in enumerate(config.sources)
    )
    return dataclasses.replace(config, sources=named)


def _check(config: Config) -> None:
    """Rules that span keys."""
    interval = config.aggregation.interval
    if interval.total_seconds() < 1 or interval.total_seconds() % 1:
        raise ConfigError("aggregation.interval: must be a whole number of seconds ≥ 1")
    for i, res in enumerate(config.aggregation.resolutions):
        if res.total_seconds() % interval.total_seconds():
            raise ConfigError(
                f"aggregation.resolutions[{i}]: {format_duration(res)} is not a multiple of "
                f"aggregation.interval ({format_duration(interval)})"
            )
    valid = {format_duration(timedelta(seconds=s)) for s in config.resolutions()}
    for key in config.store.retention:
        if format_duration(parse_duration(key, f"store.retention.{key}")) not in valid:
            raise ConfigError(
                f"store.retention.{key}: not a configured resolution; valid: {sorted(valid)}"
            )
    if config.store.flush_interval <= timedelta(0):
        raise ConfigError("store.flush_interval: must be more than 0")
    if config.store.max_batch < 1:
        raise ConfigError("store.max_batch: must be at least 1")
    if config.store.dedup_messages < 0:
        raise ConfigError("store.dedup_messages: must be at least 0")
    _check_http(config.http)
    _check_prometheus(config)
    _check_influx(config.influxdb)
    _check_backfill(config.backfill)
    _check_datanommer(config.datanommer)
    for i, source in enumerate(config.sources):
        _check_source(source, f"sources[{i}]")
    names = [s.name for s in config.sources]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(
                f"sources: two sources are named {name!r} (an unnamed source is called by its "
                "type and position, e.g. replay0); names must be unique"
            )


def _check_backfill(b: BackfillConfig) -> None:
    check_url(
        b.url, "backfill.url", ("http", "https"), "https://apps.fedoraproject.org/datagrepper"
    )
    if not 1 <= b.rows_per_page <= 100:
        raise ConfigError("backfill.rows_per_page: must be 1-100 (datagrepper's limit)")
    if b.concurrency < 1:
        raise ConfigError("backfill.concurrency: must be at least 1")
    if b.retries < 1:
        raise ConfigError("backfill.retries: must be at least 1")
    if b.window < timedelta(seconds=1):
        raise ConfigError("backfill.window: must be at least 1s")
    if not timedelta(0) < b.retry_initial <= b.retry_max:
        raise ConfigError("backfill: need 0 < retry_initial <= retry_max")
    if b.epoch:
        try:
            when = datetime.fromisoformat(b.epoch.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(
                f"backfill.epoch: {b.epoch!r} is not an ISO 8601 time (e.g. 2024-01-01T00:00:00Z)"
            ) from None
        if when.tzinfo is None:
            raise ConfigError(f"backfill.epoch: {b.epoch!r} has no time zone (add Z for UTC)")
    if b.datanommer_url:
        check_postgresql_url(b.datanommer_url, "backfill.datanommer_url")


def check_postgresql_url(url: str, path: str) -> None:
    """A libpq URL: postgresql:// (or postgres://), e.g. postgresql://reader@db/datanommer."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in ("postgresql", "postgres"):
        raise ConfigError(
            f"{path}: {mask_url(url)!r} must start with postgresql:// or postgres:// "
            "(e.g. postgresql://reader@db.example.org/datanommer)"
        )
    try:
        urlsplit(url).port  # noqa: B018 (raises on a port that is not a number)
    except ValueError as exc:
        raise ConfigError(f"{path}: {mask_url(url)!r} is not a URL ({exc})") from None


def mask_url(url: str) -> str:
    """``url`` with the password of its user part, if any, shown as ``********``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{user}:********@{host}").geturl()


def _check_datanommer(d: DatanommerConfig) -> None:
    if not 1 <= d.batch_size <= 1_000_000:
        raise ConfigError("datanommer.batch_size: must be between 1 and 1000000")
    if d.retries < 1:
        raise ConfigError("datanommer.retries: must be at least 1")
    if not timedelta(0) < d.retry_initial <= d.retry_max:
        raise ConfigError("datanommer: need 0 < retry_initial <= retry_max")
    if d.connect_timeout < timedelta(seconds=1):
        raise ConfigError("datanommer.connect_timeout: must be at least 1s")
    if d.statement_timeout < timedelta(seconds=1):
        raise ConfigError("datanommer.statement_timeout: must be at least 1s")


def _check_source(source: SourceConfig, path: str) -> None:
    if isinstance(source, FedoraMessagingSourceConfig):
        if source.profile == "none" and not source.amqp_url:
            raise ConfigError(
                f"{path}.amqp_url: required (e.g. amqp://localhost/%2F), unless "
                f"{path}.profile is fedora-public"
            )
        if source.amqp_url:
            check_url(
                source.amqp_url, f"{path}.amqp_url", ("amqp", "amqps"), "amqp://localhost/%2F"
            )
        if source.prefetch < 1:
            raise ConfigError(f"{path}.prefetch: must be at least 1")
        if not source.bindings:
            raise ConfigError(f"{path}.bindings: give at least one binding")
        if bool(source.tls.certfile) != bool(source.tls.keyfile):
            raise ConfigError(f"{path}.tls: give both certfile and keyfile, or neither")
    if isinstance(source, FedmsgSourceConfig):
        if not source.endpoints:
            raise ConfigError(f"{path}.endpoints: give at least one endpoint")
        for n, endpoint in enumerate(source.endpoints):
            _check_endpoint(endpoint, f"{path}.endpoints[{n}]")
        if source.high_water_mark < 0:
            raise ConfigError(f"{path}.high_water_mark: must be 0 (unlimited) or more")
    if isinstance(source, DatagrepperSourceConfig):
        check_url(
            source.url,
            f"{path}.url",
            ("http", "https"),
            "https://apps.fedoraproject.org/datagrepper",
        )
        if not 1 <= source.rows_per_page <= 100:
            raise ConfigError(f"{path}.rows_per_page: must be 1-100 (datagrepper's limit)")
        if source.interval <= timedelta(0):
            raise ConfigError(f"{path}.interval: must be more than 0")
    reconnect = getattr(source, "reconnect", None)
    if reconnect is not None and not timedelta(0) < reconnect.initial <= reconnect.max:
        raise ConfigError(f"{path}.reconnect: need 0 < initial <= max")


_TCP_ENDPOINT = re.compile(r"^tcp://(\*|\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+):([0-9]{1,5})$")


def _check_endpoint(endpoint: str, path: str) -> None:
    """A ZeroMQ endpoint to connect to: tcp://host:port (or ipc://path)."""
    if endpoint.startswith("ipc://") and len(endpoint) > len("ipc://"):
        return
    match = _TCP_ENDPOINT.fullmatch(endpoint)
    if match is None or not 0 < int(match.group(2)) < 65536:
        raise ConfigError(
            f"{path}: {endpoint!r} is not a ZeroMQ endpoint to connect to: give "
            "tcp://host:port (e.g. tcp://hub.fedoraproject.org:9940) or ipc://path"
        )


def check_url(url: str, path: str, schemes: tuple[str, ...], example: str) -> None:
    """A URL with one of ``schemes`` and a host (and, if any, a numeric port)."""
    valid = " or ".join(f"{scheme}://" for scheme in schemes)
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port  # .port raises on a port that is not a number
    except ValueError as exc:
        raise ConfigError(f"{path}: {url!r} is not a URL ({exc}); e.g. {example}") from None
    if parts.scheme.lower() not in schemes:
        raise ConfigError(f"{path}: {url!r} must start with {valid} (e.g. {example})")
    if not host:
        raise ConfigError(f"{path}: {url!r} names no host (e.g. {example})")


_PREFIX = re.compile(r"^([a-zA-Z_][a-zA-Z0-9_]*)?$")


def _check_http(http: HttpConfig) -> None:
    if not 0 <= http.port <= 65535:
        raise ConfigError(f"http.port: {http.port} is not a TCP port (0-65535; 0 picks a free one)")
    if bool(http.tls.cert_file) != bool(http.tls.key_file):
        raise ConfigError("http.tls: give both cert_file and key_file, or neither")
    for key in ("cert_file", "key_file"):
        path = getattr(http.tls, key)
        if path and not Path(path).is_file():
            raise ConfigError(f"http.tls.{key}: {path} is not a readable file")
    if bool(http.basic_auth.username) != bool(http.basic_auth.password):
        raise ConfigError("http.basic_auth: give both username and password, or neither")
    if not 1 <= http.workers <= 256:
        raise ConfigError(f"http.workers: {http.workers} is not between 1 and 256")
    for key in ("idle_timeout", "read_timeout", "tls_handshake_timeout"):
        if getattr(http, key).total_seconds() <= 0:
            raise ConfigError(f"http.{key}: must be more than 0 seconds")
    if not 1024 <= http.max_header_bytes <= 1_048_576:
        raise ConfigError(
            f"http.max_header_bytes: {http.max_header_bytes} is not between 1024 and 1048576"
        )
    if not 0 <= http.max_body_bytes <= 1_073_741_824:
        raise ConfigError(
            f"http.max_body_bytes: {http.max_body_bytes} is not between 0 and 1073741824"
        )
    api = http.api
    if not 1 <= api.default_rows_per_page <= api.max_rows_per_page:
        raise ConfigError(
            "http.api.default_rows_per_page: must be between 1 and http.api.max_rows_per_page "
            f"({api.max_rows_per_page})"
        )


def _check_prometheus(config: Config) -> None:
    if not _PREFIX.fullmatch(config.prometheus.prefix):
        raise ConfigError(
            f"prometheus.prefix: {config.prometheus.prefix!r} must match {_PREFIX.pattern}"
        )
    if config.prometheus.max_series < 1:
        raise ConfigError("prometheus.max_series: must be at least 1")
    if not config.prometheus.overflow_value:
        raise ConfigError("prometheus.overflow_value: must not be empty")
    for ident, plugin in config.plugins.items():
        if plugin.max_series is not None and plugin.max_series < 1:
            raise ConfigError(f"plugins.{ident}.max_series: must be at least 1")


_TAG_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _check_influx(influx: InfluxConfig) -> None:
    if not influx.enabled:
        return
    check_url(influx.url, "influxdb.url", ("http", "https"), "http://127.0.0.1:8086")
    if influx.mode == "v1" and not influx.database:
        raise ConfigError("influxdb.database: required in mode v1")
    if influx.mode == "v2":
        for key in ("org", "bucket", "token"):
            if not getattr(influx, key):
                raise ConfigError(f"influxdb.{key}: required in mode v2")
    for key in influx.tags:
        if not _TAG_KEY.fullmatch(key):
            where = f"influxdb.tags.{key}" if key.isprintable() else f"influxdb.tags[{key!r}]"
            raise ConfigError(f"{where}: a tag key must match {_TAG_KEY.pattern}")
    if not 1 <= influx.batch_size <= 100_000:
        raise ConfigError("influxdb.batch_size: must be between 1 and 100000")
    if influx.max_pending < influx.batch_size:
        raise ConfigError("influxdb.max_pending: must be at least influxdb.batch_size")
    if influx.retry_initial > influx.retry_max:
        raise ConfigError("influxdb.retry_initial: must not exceed influxdb.retry_max")


# --- generic dataclass builder ---------------------------------------------------------------


def build(cls: Any, data: Any, path: str) -> Any:
    """Build dataclass ``cls`` from ``data``, checking every key and type on the way."""
    hints = get_type_hints(cls)
    if data is None and path:
        data = {}  # `store:` with nothing under it: all defaults
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or '(top level)'}: expected a mapping, got {_kind(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise ConfigError(
                f"{_join(path, str(key))}: unknown key; valid keys: "
                f"{', '.join(fields) or '(none: it takes no keys)'}"
            )
    values: dict[str, Any] = {}
    for name, f in fields.items():
        where = _join(path, name)
        if name in data:
            values[name] = convert(hints[name], data[name], where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: required key is missing")
    return cls(**values)


def convert(tp: Any, value: Any, path: str) -> Any:
    """Check and convert one value against a type hint."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        return _convert_union(args, value, path)
    if origin is Literal:
        if value not in args:
            raise ConfigError(
                f"{path}: {value!r} is not a valid choice; valid: {', '.join(map(str, args))}"
            )
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if tp is timedelta:
        return parse_duration(value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {_kind(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected a whole number, got {_kind(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path}: expected a number, got {_kind(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {_kind(value)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {_kind(value)}")
        item = args[0]
        items = [_convert_item(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {_kind(value)}")
        return {str(k): convert(args[1], v, _join(path, str(k))) for k, v in value.items()}
    raise TypeError(f"config schema has an unsupported type {tp!r} at {path}")


def _convert_item(tp: Any, value: Any, path: str) -> Any:
    if tp == SourceConfig or tp in SOURCE_TYPES.values():
        return _convert_source(value, path)
    return convert(tp, value, path)


def _convert_source(value: Any, path: str) -> Any:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: expected a mapping with a 'type', got {_kind(value)}")
    kind = value.get("type")
    if kind not in SOURCE_TYPES:
        raise ConfigError(
            f"{path}.type: {kind!r} is not a source type; valid: {', '.join(SOURCE_TYPES)}"
        )
    return build(SOURCE_TYPES[kind], value, path)


def _convert_union(args: tuple[Any, ...], value: Any, path: str) -> Any:
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{path}: must not be empty")
    if timedelta in args and type(None) in args and value in ("forever", "never", "none"):
        return None
    rest = [a for a in args if a is not type(None)]
    errors = []
    for tp in rest:
        try:
            return convert(tp, value, path)
        except ConfigError as exc:
            errors.append(str(exc))
    raise ConfigError(
        errors[0] if len(errors) == 1 else f"{path}: {_kind(value)} fits none of {rest}"
    )


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_tree(data: Any, path: str) -> Any:
    """Every string in the parsed YAML with its ``${NAME}`` references expanded."""
    if isinstance(data, str):
        return _expand_env(data, path)
    if isinstance(data, Mapping):
        return {k: _expand_tree(v, _join(path, str(k))) for k, v in data.items()}
    if isinstance(data, list):
        return [_expand_tree(v, f"{path}[{i}]") for i, v in enumerate(data)]
    return data


def _expand_env(value: str, path: str) -> str:
    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{path}: environment variable {name} is not set")

    return _ENV_REF.sub(sub, value)


# --- durations -----------------------------------------------------------------------------

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_LONGEST = timedelta(days=36500)  # a century: longer is surely a typo, and overflows soon after


def parse_duration(value: Any, path: str) -> timedelta:
    """``1s``, ``5m``, ``48h``, ``7d``, ``2w``, ``500ms``, or a number of seconds (also as a
    string, as YAML mapping keys are)."""
    if isinstance(value, bool):
        raise ConfigError(f"{path}: expected a duration such as 1s, 5m, 48h, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    else:
        raise ConfigError(
            f"{path}: {value!r} is not a duration; write e.g. 500ms, 1s, 5m, 48h, 7d, 2w or seconds"
        )
    if seconds < 0:
        raise ConfigError(f"{path}: a duration cannot be negative")
    if not seconds <= _LONGEST.total_seconds():  # also catches NaN
        raise ConfigError(f"{path}: {value!r} is not a duration of at most 100 years")
    return timedelta(seconds=seconds)


def format_duration(d: timedelta) -> str:
    """The shortest exact spelling: 1s, 5m, 48h → 2d, 1500ms."""
    ms = round(d.total_seconds() * 1000)
    for unit, size in (
        ("w", 604800000),
        ("d", 86400000),
        ("h", 3600000),
        ("m", 60000),
        ("s", 1000),
    ):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


# --- showing -------------------------------------------------------------------------------


def to_plain(value: Any, key: str = "") -> Any:
    """The config as plain YAML-able data, durations spelled out and secrets masked."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name), f.name) for f in dataclasses.fields(value)}
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, Mapping):
        if key == "retention":  # None there means kept forever, as config.yaml spells it
            return {
                str(k): "forever" if v is None else to_plain(v, str(k)) for k, v in value.items()
            }
        return {str(k): to_plain(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v, key) for v in value]
    if isinstance(value, str) and value and SECRET_KEYS.search(key):
        return "********"
    if isinstance(value, str) and key.endswith("_url"):
        return mask_url(value)
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, str):
        return f"a string ({value[:40]!r})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__
