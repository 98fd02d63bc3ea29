"""Settings: read from the environment, malformed values stop start-up with one clear line."""

import subprocess
import sys
from pathlib import Path

import pytest

from app.core.config import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_use_the_embedded_broker_and_sqlite(monkeypatch, tmp_path):
    monkeypatch.setenv("VAR_DIR", str(tmp_path / "var"))
    settings = load_settings()
    assert settings.uses_embedded_broker
    assert settings.broker_url == f"redis+socket://{tmp_path}/var/run/valkey.sock"
    assert settings.result_backend_url == settings.broker_url
    assert settings.sqlalchemy_url == f"sqlite:///{tmp_path}/var/app.db"


def test_seed_variables_are_read(monkeypatch):
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://localhost:6379/0")
    monkeypatch.setenv("CELERY_RESULT_BACKEND", "redis://localhost:6379/1")
    monkeypatch.setenv("DATABASE_URL", "postgresql://user:pass@localhost/db")
    settings = load_settings()
    assert not settings.uses_embedded_broker
    assert settings.broker_url == "redis://localhost:6379/0"
    assert settings.result_backend_url == "redis://localhost:6379/1"
    assert settings.sqlalchemy_url == "postgresql+psycopg2://user:pass@localhost/db"


def test_result_backend_defaults_to_the_broker(monkeypatch):
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://localhost:6379/0")
    assert load_settings().result_backend_url == "redis://localhost:6379/0"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CELERY_BROKER_URL", "http://localhost:6379/0"),
        ("CELERY_BROKER_URL", "localhost:6379"),
        ("DATABASE_URL", "mysql://root@localhost/db"),
        ("LOG_RETENTION_DAYS", "-3"),
        ("TEMP_FILE_TTL_HOURS", "soon"),
        ("DISK_WARN_PERCENT", "120"),
    ],
)
def test_malformed_value_names_the_variable(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    message = str(raised.value)
    assert variable in message
    assert "\n" not in message


def test_warn_threshold_must_be_below_critical(monkeypatch):
    monkeypatch.setenv("DISK_WARN_PERCENT", "95")
    monkeypatch.setenv("DISK_CRITICAL_PERCENT", "90")
    with pytest.raises(ConfigError, match="DISK_WARN_PERCENT"):
        load_settings()


def test_kuaidi100_needs_its_account(monkeypatch):
    monkeypatch.setenv("TRACKING_PROVIDER", "kuaidi100")
    with pytest.raises(ConfigError, match="KUAIDI100_CUSTOMER and KUAIDI100_KEY"):
        load_settings()
    monkeypatch.setenv("KUAIDI100_CUSTOMER", "C")
    monkeypatch.setenv("KUAIDI100_KEY", "K")
    assert load_settings().tracking_provider == "kuaidi100"


def test_long_var_path_keeps_the_socket_path_short(tmp_path):
    settings = Settings(var_dir=tmp_path / ("deep" * 40))
    assert len(str(settings.embedded_broker_socket)) <= 100


def test_bad_value_stops_the_manager_with_one_line_not_a_traceback(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "VAR_DIR": str(tmp_path), "CELERY_BROKER_URL": "amqp:/broken"}
    result = subprocess.run(
        [sys.executable, "celery_beat_manager.py", "foreground"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "CELERY_BROKER_URL" in lines[0]


def test_bad_value_stops_a_celery_worker_with_one_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "VAR_DIR": str(tmp_path), "LOG_RETENTION_DAYS": "-1"}
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "app.tasks.celery_app", "worker"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "LOG_RETENTION_DAYS" in result.stderr


def test_a_malformed_webhook_url_is_named_without_its_key(monkeypatch):
    monkeypatch.setenv("ALERT_WEBHOOK_URL", "qyapi.weixin.qq.com/cgi-bin/webhook/send?key=SECRET")
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert "ALERT_WEBHOOK_URL must be an http:// or https:// robot URL" in str(error.value)
    assert "SECRET" not in str(error.value)


@pytest.mark.parametrize("variable", ["DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"])
@pytest.mark.parametrize("url", [
    "mysql://ops:hunter2@db.internal/app",  # unsupported scheme
    "postgresql://ops:hunter2@db.internal:fivefour/app",  # a port that is not a number
    "postgresql://ops:hunt/er2@db.internal:5432/app",  # an unencoded '/' in the password
    "postgresql://ops:hunter2@[db.internal/app",  # unparsable host
    "ops:hunter2@db.internal/app",  # no scheme
])
def test_a_bad_url_is_reported_without_its_password(monkeypatch, variable, url):
    monkeypatch.setenv(variable, url)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    message = str(raised.value)
    assert variable in message and "ops:***@" in message
    assert "hunt" not in message and "er2" not in message


def test_a_celery_worker_reports_a_bad_database_url_without_its_password(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "VAR_DIR": str(tmp_path), "DATABASE_URL": "postgresql://ops:hunter2@db:54x2/app"}
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "app.tasks.celery_app", "worker"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "DATABASE_URL: malformed URL 'postgresql://ops:***@db:54x2/app'" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout and "Traceback" not in result.stderr
