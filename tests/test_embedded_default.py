"""The embedded default: a broker that keeps queued work across restarts, and the seed's checks."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.core.broker import EmbeddedBroker, redis_client
from app.core.config import Settings

ROOT = Path(__file__).resolve().parents[1]
SEED_DATABASE_CHECK = "from app.core.database import engine; print(engine.execute('SELECT 1').scalar())"


@pytest.fixture
def private_broker(tmp_path):
    broker = EmbeddedBroker(Settings(var_dir=tmp_path / "var", logs_dir=tmp_path / "logs"))
    broker.start()
    yield broker
    broker.stop()


def test_queued_messages_survive_a_broker_restart(private_broker):
    client = redis_client(private_broker.url)
    client.lpush("low_priority", *[f"message-{i}" for i in range(100)])
    private_broker.stop()
    assert not private_broker.ping()
    private_broker.start()
    assert redis_client(private_broker.url).llen("low_priority") == 100


def test_broker_never_evicts_keys_and_listens_on_no_tcp_port(private_broker):
    config = redis_client(private_broker.url).config_get("*")
    assert config["maxmemory-policy"] == "noeviction"
    assert config["port"] == "0"
    assert config["appendonly"] == "yes"


def test_stop_is_idempotent_and_leaves_no_pid_file(private_broker):
    private_broker.stop()
    private_broker.stop()
    assert not private_broker.pidfile.exists() and private_broker.pid() is None


def test_a_reused_pid_is_never_taken_for_the_broker(private_broker, tmp_path):
    private_broker.stop()
    private_broker.pidfile.write_text(str(os.getpid()))  # a live process that is not Valkey
    assert private_broker.pid() is None
    private_broker.stop()  # must not signal this test process
    assert private_broker.start() is not None


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_seed_troubleshooting_database_check_prints_1(backend, tmp_path, request):
    env = {**os.environ, "VAR_DIR": str(tmp_path / "var")}
    env.pop("DATABASE_URL", None)
    if backend == "postgresql":
        env["DATABASE_URL"] = request.getfixturevalue("postgres_url")
    result = subprocess.run([sys.executable, "-c", SEED_DATABASE_CHECK], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"
