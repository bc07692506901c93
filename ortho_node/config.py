"""One validated Settings object for the whole node.

Sources, highest priority first: explicit keyword arguments (the CLI), ``ORTHO_*`` environment
variables (nested fields with ``__``, e.g. ``ORTHO_DIMSE__PORT=11112``), the YAML file named by
``ORTHO_CONFIG`` (or ``--config``), then the defaults below. The defaults are the *embedded*
setup: SQLite index, file store and Celery broker under ``./var``; nothing else to install.

Each option documents its meaning, default and an example where it is defined. Settings are
built once at start-up and passed down explicitly; nothing changes them at run time.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

CONFIG_ENV_VAR = "ORTHO_CONFIG"

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE VR: no backslash, no control chars


def _check_ae_title(value: str, field: str) -> str:
    stripped = value.strip()
    if not stripped or not _AE_TITLE.match(value):
        raise ValueError(f"{field} must be 1-16 printable characters without backslash, got {value!r}")
    return stripped


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AllowedCaller(_Section):
    """A calling AE title allowed to associate, optionally only from given hosts or networks.

    Example (YAML): ``{ae_title: PACS1, hosts: ["10.1.2.3", "10.1.9.0/24"]}``
    """

    ae_title: str
    hosts: tuple[str, ...] = ()

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str) -> str:
        return _check_ae_title(v, "ae_title")

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for host in v:
            try:
                ipaddress.ip_network(host, strict=False)
            except ValueError as exc:
                raise ValueError(f"hosts entry {host!r} is not an IP address or network") from exc
        return v

    def permits(self, ae_title: str, host: str) -> bool:
        if ae_title.strip() != self.ae_title:
            return False
        if not self.hosts:
            return True
        address = ipaddress.ip_address(host)
        return any(address in ipaddress.ip_network(h, strict=False) for h in self.hosts)


class TlsSettings(_Section):
    """DICOM TLS for the SCP (PS3.15 B.1). Off unless ``cert`` and ``key`` are given.

    ``ca`` with ``require_client_cert: true`` enforces mutual TLS.
    """

    cert: Path
    key: Path
    ca: Path | None = None
    require_client_cert: bool = False

    @model_validator(mode="after")
    def _files_exist(self) -> "TlsSettings":
        for name in ("cert", "key", "ca"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name} file {path} does not exist")
        if self.require_client_cert and self.ca is None:
            raise ValueError("require_client_cert needs ca (the CA that signs client certificates)")
        return self


class DimseSettings(_Section):
    """The DIMSE SCP (C-ECHO, C-STORE).

    ``allowed_callers`` empty means any calling AE title may associate (logged as a warning at
    start-up); a hospital deployment should list its PACS and modalities.
    ``max_pdu`` is the largest P-DATA PDU we accept, in bytes; 0 means unlimited.
    """

    ae_title: str = "ORTHO"
    host: str = Field("0.0.0.0", description="address the DIMSE SCP listens on")
    port: int = Field(11112, ge=1, le=65535)
    max_associations: int = Field(
        16, ge=1, le=1000, description="associations served at once; one more is rejected (transient)"
    )
    max_pdu: int = Field(0, ge=0)
    allowed_callers: tuple[AllowedCaller, ...] = ()
    require_called_ae_title: bool = Field(False, description="reject associations not addressed to ae_title")
    tls: TlsSettings | None = None
    acse_timeout_s: float = Field(30.0, gt=0, description="association negotiation and release, seconds")
    dimse_timeout_s: float = Field(60.0, gt=0, description="waiting for a DIMSE message within an association")
    network_timeout_s: float = Field(60.0, gt=0, description="an idle association is aborted after this long")
    idle_poll_delay_s: float = Field(
        0.001,
        ge=0,
        le=0.01,
        description="pynetdicom's DUL reactor sleep when idle; 0 trades idle CPU for C-STORE latency",
    )

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str) -> str:
        return _check_ae_title(v, "ae_title")


class HttpSettings(_Section):
    """HTTP: ``/healthz``, ``/metrics`` (Prometheus), the admin API under ``/api`` and the
    DICOMweb STOW-RS service under ``/dicomweb``.

    Without ``admin_token`` the server must listen on a loopback address (checked at start-up);
    with it, admin routes need ``Authorization: Bearer <token>``. STOW-RS needs the bearer
    ``stow_token`` when set, else the ``admin_token`` when set (so it is never open beyond
    loopback).
    """

    host: str = "127.0.0.1"
    port: int = Field(8090, ge=1, le=65535)
    enabled: bool = True
    admin_token: SecretStr | None = None
    stow_token: SecretStr | None = None
    stow_max_bytes: int = Field(1 << 30, ge=1 << 20, description="largest STOW-RS request body (413 above)")


class StableAge(_Section):
    """Seconds without a new instance after which a study counts as complete.

    ``per_modality`` overrides the default; a study with several modalities waits for the
    longest of them. Example: ``{default_s: 10, per_modality: {MR: 30, DX: 5}}``.
    """

    default_s: float = Field(10.0, gt=0)
    per_modality: dict[str, float] = Field(default_factory=lambda: {"CR": 5.0, "DX": 5.0, "MR": 20.0})

    @field_validator("per_modality")
    @classmethod
    def _positive(cls, v: dict[str, float]) -> dict[str, float]:
        for modality, seconds in v.items():
            if seconds <= 0:
                raise ValueError(f"per_modality[{modality}] must be > 0 seconds, got {seconds}")
        return {k.upper(): float(s) for k, s in v.items()}

    def for_modalities(self, modalities: set[str]) -> float:
        return max((self.per_modality.get(m.upper(), self.default_s) for m in modalities), default=self.default_s)


class RoutingMatch(_Section):
    """Conditions of a routing rule; all given conditions must hold for a series.

    Lists match exactly, case-insensitive; ``*_pattern`` fields are Python regular expressions
    searched case-insensitively.
    """

    modality: tuple[str, ...] = ()
    body_part: tuple[str, ...] = ()
    calling_ae: tuple[str, ...] = ()
    study_description_pattern: str | None = None
    series_description_pattern: str | None = None

    @field_validator("study_description_pattern", "series_description_pattern")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {v!r}: {exc}") from exc
        return v


class RoutingRule(_Section):
    """One routing rule: the first rule whose ``match`` holds for a series decides its fate."""

    name: str = Field(min_length=1)
    action: Literal["process", "ignore"]
    match: RoutingMatch = RoutingMatch()


class RoutingSettings(_Section):
    """Which studies the node processes (see docs in ``ortho_node/ingest/rules.py``).

    Rules come from ``rules`` here and/or a YAML ``rules_file`` (its rules are appended).
    ``default_action`` applies to series no rule matches.
    """

    rules: tuple[RoutingRule, ...] = ()
    rules_file: Path | None = None
    default_action: Literal["process", "ignore"] = "process"

    @field_validator("rules_file")
    @classmethod
    def _rules_file_exists(cls, v: Path | None) -> Path | None:
        # checked here, so `config show` finds it, not only `serve` at start-up
        if v is not None and not v.is_file():
            raise ValueError(f"no such rules file: {v}")
        return v


class DimseDestination(_Section):
    """A C-STORE SCU destination for results."""

    kind: Literal["dimse"] = "dimse"
    name: str
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    calling_ae_title: str | None = Field(
        None, description="the node's AE title towards this PACS; default dimse.ae_title"
    )
    tls: TlsSettings | None = None
    storage_commitment: bool = Field(
        False,
        description="after each batch, ask the PACS to commit to the objects it acknowledged (Storage "
        "Commitment Push Model, N-ACTION) and count them delivered only when its N-EVENT-REPORT says so; "
        "what it reports missing is sent again. The PACS must know this node's AE title, host and port "
        "(and be in dimse.allowed_callers where that list is set) to report",
    )

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str) -> str:
        return _check_ae_title(v, "ae_title")

    @field_validator("calling_ae_title")
    @classmethod
    def _calling_ae(cls, v: str | None) -> str | None:
        return None if v is None else _check_ae_title(v, "calling_ae_title")

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("host must name the PACS (a host name or address)")
        return v


class StowDestination(_Section):
    """A STOW-RS destination for results (basic or bearer auth)."""

    kind: Literal["stow"] = "stow"
    name: str
    url: str
    username: str | None = None
    password: SecretStr | None = None
    bearer_token: SecretStr | None = None
    verify_tls: bool = Field(True, description="check the server's TLS certificate (https)")
    verify_stored: bool = Field(
        False,
        description="after each STOW-RS request, read the result series back by QIDO-RS and count as "
        "delivered only the instances the server lists (some servers answer 'stored' for instances their "
        "own rules discard); the others are sent again",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        parsed = urlsplit(v)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"url must be an http:// or https:// URL of the DICOMweb service, got {mask_url(v)!r}")
        return v


class DeliverySettings(_Section):
    """Retry policy for result delivery."""

    max_attempts: int = Field(6, ge=1, description="sends of an object to a destination before it is dead-lettered")
    backoff_initial_s: float = Field(5.0, gt=0, description="wait after the first failed send, doubled after each")
    backoff_max_s: float = Field(600.0, gt=0, description="longest wait between sends")
    include_key_objects: bool = Field(
        False, description="also send a Key Object Selection of the key images and results"
    )
    association_idle_s: float = Field(
        5.0,
        ge=0,
        description="keep a DIMSE association open this long after a batch for the next batch to the "
        "same destination (as Orthanc's DicomAssociationCloseDelay); 0 releases it at once",
    )
    commitment_timeout_s: float = Field(
        300.0,
        gt=0,
        description="how long a destination with storage_commitment has to report on a commitment "
        "request; objects it has not reported on by then are sent again (one more attempt)",
    )

    def backoff(self, attempts: int) -> dt.timedelta:
        """The wait before the next attempt after ``attempts`` failed ones (exponential, capped)."""
        seconds = self.backoff_initial_s * (2 ** max(0, attempts - 1))
        return dt.timedelta(seconds=min(seconds, self.backoff_max_s))


class WorkerSettings(_Section):
    """Model workers."""

    bundle: Path | None = Field(None, description="model bundle directory; default: the packaged demo bundle")
    device: str = Field("cpu", description="where the encoder runs: cpu, cuda, cuda:N or mps")
    concurrency: int = Field(1, ge=1, le=64, description="jobs at a time: threads, or child processes with pool prefork")
    pool: Literal["threads", "prefork"] = Field(
        "threads",
        description="threads: one process, one resident model, jobs batched together; prefork: a child "
        "process per job slot, each with its own model, so that preparation (Python, one core per "
        "process) uses a many-core GPU host",
    )
    max_batch: int = Field(32, ge=1, description="images (radiographs or MR slices) per encoder forward, across jobs")
    max_wait_ms: float = Field(20.0, ge=0, description="how long a forward waits for more images to join its batch")
    compile: bool = Field(
        False,
        description="torch.compile the encoder, paid at worker start: on a CPU frozen weights, one graph "
        "per batch bucket, matrix products autotuned (minutes); on a GPU one graph for every batch size "
        "(ViT-L/16 on an H200: 2 minutes, then 1.8x the eager forward)",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast only where the device computes bf16 natively (CUDA, AMX CPUs)"
    )
    shared_engine: bool = Field(
        False,
        description="with pool prefork: one engine process holds the encoder on the device and batches "
        "the images of all children together (one model copy, one CUDA context); the children read, "
        "prepare, run the heads and build the results",
    )
    embedded: bool = Field(True, description="serve starts a worker process itself")
    job_lease_s: float = Field(900.0, gt=0, description="a running job silent this long is requeued")
    max_attempts: int = Field(
        3, ge=1, description="runs of a job (transient errors, lost workers) before it fails; deliveries have their own"
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", v):
            raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {v!r}")
        return v

    @model_validator(mode="after")
    def _shared_engine_needs_prefork(self) -> "WorkerSettings":
        if self.shared_engine and self.pool != "prefork":
            raise ValueError("shared_engine serves the children of a prefork pool: set pool: prefork (threads share one engine already)")
        return self


class Settings(BaseSettings):
    """The node's configuration. See the module docstring for where values come from."""

    model_config = SettingsConfigDict(
        env_prefix="ORTHO_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    var_dir: Path = Field(Path("var"), description="store, embedded databases and results live here")
    database_url: SecretStr | None = Field(None, description="default: sqlite:///<var_dir>/index.sqlite")
    broker_url: SecretStr | None = Field(None, description="default: orthosqla+sqlite:///<var_dir>/broker.sqlite")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    dimse: DimseSettings = DimseSettings()
    http: HttpSettings = HttpSettings()
    stable_age: StableAge = StableAge()
    assembler_interval_s: float = Field(
        1.0, gt=0, le=60, description="how often serve looks for studies that became stable"
    )
    routing: RoutingSettings = RoutingSettings()
    destinations: tuple[DimseDestination | StowDestination, ...] = ()
    delivery: DeliverySettings = DeliverySettings()
    worker: WorkerSettings = WorkerSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        _refuse_unknown_env(settings_cls)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_ENV_VAR)
        if config_file:
            if not Path(config_file).is_file():
                raise FileNotFoundError(f"{CONFIG_ENV_VAR}={config_file}: no such config file")
            sources.append(_MappingYamlSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            _check_sqlalchemy_url(v.get_secret_value(), "database_url")
        return v

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not urlsplit(v.get_secret_value()).scheme:
            raise ValueError("broker_url must be a URL such as redis://host:6379/0")
        return v

    @field_validator("destinations")
    @classmethod
    def _unique_destinations(cls, v: tuple[Any, ...]) -> tuple[Any, ...]:
        names = [d.name for d in v]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"destination names must be unique, repeated: {', '.join(duplicates)}")
        return v

    # Derived locations: one place that says where everything lives under var_dir.
    @property
    def store_dir(self) -> Path:
        return self.var_dir / "store"

    @property
    def results_dir(self) -> Path:
        return self.var_dir / "results"

    @property
    def quarantine_dir(self) -> Path:
        return self.var_dir / "quarantine"

    @property
    def effective_database_url(self) -> str:
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite:///{(self.var_dir / 'index.sqlite').resolve()}"

    @property
    def effective_broker_url(self) -> str:
        if self.broker_url is not None:
            return self.broker_url.get_secret_value()
        # kombu's SQLAlchemy transport with faster polling (ortho_node.pipeline.embedded_broker)
        return f"orthosqla+sqlite:///{(self.var_dir / 'broker.sqlite').resolve()}"

    @property
    def broker_is_embedded(self) -> bool:
        return "+sqlite:" in self.effective_broker_url


class _MappingYamlSource(YamlConfigSettingsSource):
    """The YAML file, refused with a one-line reason when it does not parse or is not a mapping."""

    def _read_file(self, file_path: Path) -> dict[str, Any]:
        try:
            data = super()._read_file(file_path)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise ValueError(f"{file_path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{file_path}: the top level must be a mapping of settings, got {type(data).__name__}")
        return data


def _refuse_unknown_env(settings_cls: type[BaseSettings]) -> None:
    """An ``ORTHO_*`` variable that names no setting is a typo (``ORTHO_DATABASE`` for
    ``ORTHO_DATABASE_URL``, ``ORTHO_HTTP_ADMIN_TOKEN`` for ``ORTHO_HTTP__ADMIN_TOKEN``): pydantic
    ignores it, and the node would quietly run on a default instead."""
    fields = {name.upper() for name in settings_cls.model_fields}
    unknown = sorted(
        name for name in os.environ
        if name.upper().startswith("ORTHO_") and name.upper() != CONFIG_ENV_VAR.upper()
        and name.upper()[len("ORTHO_"):].split("__")[0] not in fields
    )
    if unknown:
        raise ValueError(f"environment variable(s) naming no setting: {', '.join(unknown)} (nested settings use '__')")


def _check_sqlalchemy_url(url: str, field: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(url).get_dialect().import_dbapi()  # the driver too: a mysql:// URL without one
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        detail = f"{type(exc).__name__}: {mask_url(str(exc))}"
        raise ValueError(f"{field} is not a database URL this node can use ({detail})") from None


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build Settings from a YAML file (optional), the environment and explicit overrides.

    Raises
    ------
    pydantic.ValidationError
        An invalid value; the message names the field (see :func:`describe_validation_error`).
    """
    if config_file is not None:
        os.environ[CONFIG_ENV_VAR] = str(config_file)
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def describe_validation_error(exc: Exception) -> str:
    """One line per invalid field: ``dimse.port: Input should be less than or equal to 65535``."""
    errors = getattr(exc, "errors", None)
    if errors is None:
        return str(exc)
    lines = []
    for err in errors():
        location = ".".join(str(part) for part in err.get("loc", ())) or "(settings)"
        lines.append(f"{location}: {err.get('msg')}")
    return "\n".join(lines)


_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z0-9+.-]+://)(?P<user>[^:/@]*):(?P<pw>[^@]*)@", re.IGNORECASE)
# query parameters drivers and services read secrets from (psycopg, redis-py: ?password=)
_URL_QUERY_SECRET = re.compile(
    r"(?P<key>[?&](?:password|passwd|pwd|access_token|token|api_key|apikey)=)[^&#]*", re.IGNORECASE
)


def mask_url(url: str) -> str:
    """Hide a password embedded in a URL: ``redis://:s3cret@h/0`` → ``redis://:***@h/0``, and
    secrets in its query: ``postgresql://u@db/x?password=s3cret`` → ``…?password=***``."""
    url = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", url)
    return _URL_QUERY_SECRET.sub(lambda m: f"{m['key']}***", url)


def effective_config(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data with every secret masked (for ``config show``)."""
    data = settings.model_dump(mode="json")
    data["database_url"] = mask_url(settings.effective_database_url)
    data["broker_url"] = mask_url(settings.effective_broker_url)
    for dest in data.get("destinations", []):
        for secret in ("password", "bearer_token"):
            if dest.get(secret):
                dest[secret] = "***"
        if "url" in dest:
            dest["url"] = mask_url(dest["url"])
    return data
