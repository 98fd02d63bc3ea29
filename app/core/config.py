"""One typed settings object, read from the environment and an optional `.env` file."""

import hashlib
import os
import sys
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TIMEZONE = "Asia/Shanghai"

BROKER_SCHEMES = ("redis", "rediss", "redis+socket")
DATABASE_SCHEMES = ("postgresql", "postgresql+psycopg2", "postgres", "sqlite")
SIMULATOR_ACCOUNT = ("SIMULATOR", "simulator-key")
# A unix socket path must fit in sockaddr_un.sun_path (108 bytes on Linux).
MAX_SOCKET_PATH = 100
# Files and directories a process of the service creates are its user's alone (var/ holds phones and addresses).
PRIVATE_UMASK = 0o077


class ConfigError(Exception):
    """A setting is missing or malformed; the message is one line naming the variable."""


def masked_url(url: str) -> str:
    """`url` with whatever may be its password (between the user's ':' and the host's '@') as ***.

    Works on malformed URLs too (no scheme, an unencoded '/' or '@' in the password): it never parses.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    userinfo, at, host = rest.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    return f"{scheme}{separator}{user}:***@{host}" if at and colon else url


def _check_url(name: str, value: str | None, schemes: tuple[str, ...]) -> str | None:
    if value is None:
        return None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:  # its message may quote part of a password: not shown
        raise ValueError(f"{name}: malformed URL {masked_url(value)!r}; the port must be a number and "
                         "special characters in a password (@ : / ? #) percent-encoded") from None
    if parts.scheme not in schemes:
        raise ValueError(f"{name}: unsupported URL {masked_url(value)!r}; "
                         f"expected one of {', '.join(s + '://' for s in schemes)}")
    return value


class Settings(BaseSettings):
    """Everything configurable, with the seed's variable names and sane defaults."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    celery_broker_url: str | None = None
    celery_result_backend: str | None = None
    database_url: str | None = None

    app_home: Path = PROJECT_ROOT
    logs_dir: Path | None = None
    var_dir: Path | None = None
    temp_dir: Path | None = None
    backups_dir: Path | None = None
    files_dir: Path | None = None  # screenshots, receipts and documents, stored by content
    reports_dir: Path | None = None  # report HTML and CSV files
    document_inbox: Path | None = None  # the only directory register_document tasks read files from

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    temp_file_ttl_hours: float = Field(24.0, gt=0)
    log_retention_days: int = Field(30, ge=1)
    disk_warn_percent: float = Field(80.0, gt=0, le=100)
    disk_critical_percent: float = Field(90.0, gt=0, le=100)
    # Seconds between two looks at the data volumes by each worker and beat (0 = no watch).
    disk_watch_interval: float = Field(30.0, ge=0)
    memory_warn_percent: float = Field(90.0, gt=0, le=100)
    load_warn_per_cpu: float = Field(2.0, gt=0)
    task_max_deliveries: int = Field(3, ge=1)
    worker_concurrency: int = Field(2, ge=1)
    # Seconds a beat's leader lease lasts without renewal: a standby takes over within this time
    # of the leader dying, and a beat whose heartbeat is older than this is reported down.
    beat_leader_timeout: float = Field(30.0, ge=3)
    # Seconds a connection to Redis or PostgreSQL may stay silent (no reply, no TCP acknowledgement)
    # before it is given up and reconnected (app/core/network.py).
    network_timeout: float = Field(10.0, ge=1, le=120)
    flower_address: str = "127.0.0.1"
    flower_port: int = Field(5555, ge=1, le=65535)
    flower_basic_auth: str | None = None  # user:password[,user2:password2]; unset = generated under var/
    flower_auth_disabled: bool = False  # serve Flower without a login (only behind an authenticating proxy)
    flower_metrics_open: bool = False  # serve Flower's /metrics without its login (a scraper that cannot send one)
    # Failed logins (admin, Flower) one address may make, each within LOGIN_LOCKOUT_SECONDS of the one
    # before, before it is refused with 429, right password or not, until that time passes.
    login_failure_limit: int = Field(5, ge=1)
    login_lockout_seconds: float = Field(60.0, ge=1)
    admin_address: str = "127.0.0.1"
    admin_port: int = Field(8000, ge=1, le=65535)
    admin_allowed_hosts: str = "127.0.0.1,localhost"  # Host names the admin answers to, comma-separated
    # A bearer token that lets Prometheus scrape the admin's /metrics without a login; unset or empty = login only.
    metrics_token: str | None = None

    tracking_provider: Literal["kuaidi100", "simulator"] = "simulator"
    kuaidi100_customer: str | None = None
    kuaidi100_key: str | None = None
    kuaidi100_url: str = "https://poll.kuaidi100.com/poll/query.do"
    kuaidi100_rate_limit: float = Field(20.0, gt=0)  # requests per second, shared by all workers
    tracking_poll_interval: float = Field(30.0, ge=0)  # minutes between polls of one delivery; 0 = every run
    tracking_timeout: float = Field(10.0, gt=0)
    tracking_chunk_size: int = Field(100, ge=1)  # deliveries per poll task
    tracking_concurrency: int = Field(8, ge=1)  # concurrent polls inside one task
    archive_after_days: int = Field(180, ge=1)  # delivered records older than this move to the archive
    failed_retention_days: int = Field(90, ge=1)  # failed/timed-out deliveries are removed after this
    job_run_retention_days: int = Field(90, ge=1)
    backup_keep_daily: int = Field(7, ge=1)
    backup_keep_weekly: int = Field(4, ge=0)
    backup_keep_monthly: int = Field(6, ge=0)
    alert_webhook_url: str | None = None  # a WeCom (企业微信) or DingTalk (钉钉) group robot URL
    chromium_path: str | None = None  # unset = `chromium` (or chromium-browser, google-chrome) on PATH
    cjk_font_path: Path | None = None  # unset = what fontconfig finds for Chinese
    screenshot_timeout: float = Field(30.0, gt=0)  # seconds before a hanging page is abandoned
    carrier_page_url: str | None = None  # e.g. https://example.com/track?com={carrier}&nu={tracking_number}
    receipt_issuer: str | None = None  # 送达机关 printed on receipts; unset = "未设置 / not configured"
    receipt_server: str | None = None  # 送达人 printed on receipts; unset = "未设置 / not configured"
    receipt_seal_path: Path | None = None  # a PNG seal drawn over the serving body; unset = no seal
    simulator_port: int = Field(8765, ge=1, le=65535)
    # Where the workers reach the simulator: 127.0.0.1 (the manager runs it beside them), or the compose
    # service `carrier_simulator`, which serves with `python -m app simulator --host 0.0.0.0`.
    simulator_host: str = "127.0.0.1"
    simulator_latency_ms: float = Field(50.0, ge=0)
    simulator_error_rate: float = Field(0.0, ge=0, le=1)
    simulator_rate_limit: float | None = Field(None, gt=0)  # requests per second; unset = no limit
    # How the simulator dates events and how often `deliveries add` polls a new delivery (TRACKING_PROVIDER=simulator
    # only): demo signs it within a minute; realistic (benches) dates events hours apart and polls by the schedule.
    simulator_pace: Literal["demo", "realistic"] = "demo"

    @property
    def admin_hosts(self) -> list[str]:
        return [host.strip() for host in self.admin_allowed_hosts.split(",") if host.strip()]

    @property
    def carrier_url(self) -> str:
        if self.tracking_provider == "simulator":
            return f"http://{self.simulator_host}:{self.simulator_port}/poll/query.do"
        return self.kuaidi100_url

    @property
    def demo_pace(self) -> bool:
        """Tracking against the simulator at its demo pace."""
        return self.tracking_provider == "simulator" and self.simulator_pace == "demo"

    @property
    def carrier_account(self) -> tuple[str, str]:
        """(customer, key); the simulator accepts its own fixed account."""
        if self.tracking_provider == "simulator":
            return SIMULATOR_ACCOUNT
        return self.kuaidi100_customer, self.kuaidi100_key

    @field_validator("celery_broker_url", "celery_result_backend")
    @classmethod
    def _broker_scheme(cls, value, info):
        return _check_url(info.field_name.upper(), value, BROKER_SCHEMES)

    @field_validator("database_url")
    @classmethod
    def _database_scheme(cls, value):
        value = _check_url("DATABASE_URL", value, DATABASE_SCHEMES)
        if value is None:
            return None
        try:
            url = make_url(value)
        except (ArgumentError, ValueError):  # its message may quote the URL, password and all
            raise ValueError(f"DATABASE_URL: malformed URL {masked_url(value)!r}") from None
        if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
            # Beat, workers and the admin are separate processes: they can only share a file.
            raise ValueError("DATABASE_URL: sqlite:///path needs a file path (sqlite:////absolute/app.db)")
        return value

    @field_validator("alert_webhook_url")
    @classmethod
    def _webhook_scheme(cls, value):
        if not value:  # ALERT_WEBHOOK_URL= in .env: no webhook, log only
            return None
        if urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("ALERT_WEBHOOK_URL must be an http:// or https:// robot URL")  # the URL holds a key
        return value

    @field_validator("flower_basic_auth")
    @classmethod
    def _credential_pairs(cls, value):
        if value is not None and not all(user and password for user, _, password in
                                         (pair.partition(":") for pair in value.split(","))):
            raise ValueError("FLOWER_BASIC_AUTH must be user:password (several separated by commas)")
        return value

    @field_validator("metrics_token")
    @classmethod
    def _long_token(cls, value):
        if not value:  # METRICS_TOKEN= in .env: token scraping off
            return None
        if len(value) < 16:
            raise ValueError("METRICS_TOKEN must be at least 16 characters (a short token can be guessed)")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value):
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _thresholds_ordered(self):
        if self.disk_warn_percent >= self.disk_critical_percent:
            raise ValueError("DISK_WARN_PERCENT must be below DISK_CRITICAL_PERCENT")
        return self

    @model_validator(mode="after")
    def _kuaidi100_account(self):
        if self.tracking_provider == "kuaidi100" and not (self.kuaidi100_customer and self.kuaidi100_key):
            raise ValueError("TRACKING_PROVIDER=kuaidi100 needs KUAIDI100_CUSTOMER and KUAIDI100_KEY")
        return self

    @property
    def logs_path(self) -> Path:
        return self.logs_dir or self.app_home / "logs"

    @property
    def var_path(self) -> Path:
        return self.var_dir or self.app_home / "var"

    @property
    def temp_path(self) -> Path:
        return self.temp_dir or self.var_path / "tmp"

    @property
    def backups_path(self) -> Path:
        return self.backups_dir or self.var_path / "backups"

    @property
    def files_path(self) -> Path:
        return self.files_dir or self.var_path / "files"

    @property
    def reports_path(self) -> Path:
        return self.reports_dir or self.var_path / "reports"

    @property
    def document_inbox_path(self) -> Path:
        return self.document_inbox or self.var_path / "inbox"

    @property
    def run_path(self) -> Path:
        """PID files and the embedded broker's socket; kept short enough for a unix socket."""
        run = self.var_path / "run"
        if len(str(run / "valkey.sock")) <= MAX_SOCKET_PATH:
            return run
        digest = hashlib.sha1(str(run).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"celerybeat-{digest}"

    @property
    def uses_embedded_broker(self) -> bool:
        return self.celery_broker_url is None

    @property
    def embedded_broker_socket(self) -> Path:
        return self.run_path / "valkey.sock"

    @property
    def broker_url(self) -> str:
        return self.celery_broker_url or f"redis+socket://{self.embedded_broker_socket}"

    @property
    def result_backend_url(self) -> str:
        return self.celery_result_backend or self.broker_url

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file in use: the embedded var/app.db, or DATABASE_URL's; None on PostgreSQL.

        SQLAlchemy and Django both open this path, with the same options (database.py, django_settings.py).
        """
        if self.database_url is None:
            return self.var_path / "app.db"
        url = make_url(self.database_url)
        if url.get_backend_name() != "sqlite":
            return None
        # sqlite:///relative.db is relative to APP_HOME, not the working directory: every process agrees.
        return self.app_home / url.database

    @property
    def sqlalchemy_url(self) -> str:
        """DATABASE_URL in SQLAlchemy's spelling, or the embedded SQLite file."""
        if self.database_url is None:
            return f"sqlite:///{self.sqlite_path}"
        scheme, sep, rest = self.database_url.partition("://")
        if scheme in ("postgres", "postgresql"):
            return f"postgresql+psycopg2://{rest}"
        if scheme == "sqlite":  # the absolute path, whatever the working directory
            return make_url(self.database_url).set(database=str(self.sqlite_path)).render_as_string(False)
        return self.database_url


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    if first["loc"]:
        variable = str(first["loc"][0]).upper()
        if not message.startswith(variable):
            value = first.get("input")
            message = f"{variable}: {message} (got {masked_url(value) if isinstance(value, str) else value!r})"
    return message


def load_settings() -> Settings:
    """Read the settings; a malformed value raises ConfigError with one readable line."""
    env_file = os.environ.get("APP_ENV_FILE", str(PROJECT_ROOT / ".env"))
    try:
        return Settings(_env_file=env_file or None)
    except ValidationError as error:
        raise ConfigError(f"configuration error / 配置错误: {_describe(error)}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; exits with one clear line when they are malformed.

    Every process of the service reads them first, so this is also where it makes the files it
    creates from then on private to its user (logs, the SQLite database, everything under var/).
    """
    os.umask(PRIVATE_UMASK)
    try:
        return load_settings()
    except ConfigError as error:
        sys.exit(str(error))
