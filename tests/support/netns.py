"""Hosts on a private network that a test can cut off: Linux network namespaces joined by a bridge,
and the multi-host scenario of issue 14 that tests/test_multi_host.py and bench/partition.py share.

Layout (every name carries a per-run tag, so two runs never collide):

    namespace mh-<tag>-sw     the switch: bridge br0 and one port (veth end) per host, nothing else
    namespace mh-<tag>-data   eth0 10.X.Y.10: Redis and a throwaway PostgreSQL cluster started here
    namespace mh-<tag>-appa   eth0 10.X.Y.11, hostname appa: a worker and a beat of a project copy
    namespace mh-<tag>-appb   eth0 10.X.Y.12, hostname appb: the same, from a second copy

The bridge lives in a namespace of its own, not in the root one: the machine's own network (its
interfaces, routes, forwarding settings) is never touched, and nothing sent on these links can
leave them (no host namespace has a default route; the switch namespace has no address and does
not forward IP). 10.X.Y.0/24 is picked at random among subnets that no interface of the machine
(root namespace and every named namespace) uses. `lo` is up in every namespace.

How a host is cut off (`partition`) and let back (`heal`): its port on the bridge is set to the
`disabled` STP state (`bridge link set dev PORT state 0`, then `state 3`, forwarding). The bridge
silently drops every frame from and to that port; the host's own link stays up with its carrier,
address and routes, so its processes see what a real partition shows them: writes that succeed
locally and are never acknowledged, replies that never come, connects that time out. Every host
has permanent neighbour (ARP) entries for the others, so a cut does not even make ARP fail (an
ARP failure makes the kernel report "no route to host", which a cut beyond a router would not).
Why not the other ways:
  - `ip link set eth0 down` (or the peer): the kernel fails sends at once (ENETUNREACH, carrier
    lost): an error a partition never gives, which clients handle far more easily than silence;
  - `tc qdisc ... netem loss 100%`: sch_netem is not in every kernel (not in this machine's:
    "Specified qdisc kind is unknown"), nor are tc's u32/matchall classifiers and drop action;
  - iptables / nft drop rules: neither tool is installed everywhere (not here).
The bridge port state needs only iproute2 and the bridge module, and drops in both directions.

The scenario (`run_scenario`): a data host with its own Redis (AOF) and PostgreSQL, two app hosts
each running a worker and a beat of a copy of this project (tests/support/project.py), with two
quick probe jobs. Tasks run on both workers; the leader's host is cut off for 40 s and healed;
then the leader (by then the other host's beat) is killed with SIGKILL. The test process watches
through the data host's unix sockets (Redis and PostgreSQL listen on one each), which are in the
file system, not on the network: the observer is never partitioned and sends nothing on the links.
"""

import ipaddress
import json
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from tests.support.project import ROOT, Project
from tests.support.waiting import wait_until

SHANGHAI = ZoneInfo("Asia/Shanghai")  # app/core/config.py TIMEZONE: the zone of every log line
DATA, APP_A, APP_B = "data", "appa", "appb"
APP_HOSTS = (APP_A, APP_B)
REDIS_PORT, POSTGRES_PORT = 6379, 5432
DATABASE = "multihost"
LEADER_TIMEOUT = 10.0  # BEAT_LEADER_TIMEOUT of both beats: a tick every 2.5 s, a lease of 7.5 s
PARTITION_SECONDS = 40.0
# Seconds after the cut worker reconnects in which its consumer may still tear the old channel down.
RECONNECT_SLACK = 2.0
RESUME_TARGET = 10.0  # seconds from the heal to the cut worker's next task (issue 14)
NOTICE_TARGET = 15.0  # seconds for a process on a cut host to notice (issue 14; reported, not asserted)
PROBE_JOBS = {"mh-every-1s": 1, "mh-every-2s": 2}  # name: period in seconds

LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): (\w+)/([^\]]*)\] (.*)$")
SENDING = re.compile(r"Scheduler: Sending due task (\S+) \((\S+)\), due (\d\d:\d\d:\d\d)")
RECEIVED = re.compile(r"Task (\S+)\[([0-9a-f-]{36})\] received")
FAILED = re.compile(r"Task (\S+)\[([0-9a-f-]{36})\] (raised unexpected|raised|failed)")
RESULT_KEY = "celery-task-meta-"


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


# -- what the machine must offer -------------------------------------------------------------------


def postgres_bin() -> Path | None:
    """The newest /usr/lib/postgresql/N/bin with initdb and postgres (POSTGRES_BIN overrides)."""
    candidates = [Path(os.environ["POSTGRES_BIN"])] if os.environ.get("POSTGRES_BIN") else sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda path: int(path.parent.name)
        if path.parent.name.isdigit() else 0, reverse=True)
    return next((path for path in candidates if (path / "initdb").exists() and (path / "postgres").exists()), None)


def missing() -> str | None:
    """Why this machine cannot run the multi-host scenario, or None when it can."""
    if os.geteuid() != 0:
        return "not root: network namespaces, veth pairs and bridges need root (CAP_NET_ADMIN, CAP_SYS_ADMIN)"
    for tool, package in (("ip", "iproute2"), ("bridge", "iproute2"), ("unshare", "util-linux"),
                          ("runuser", "util-linux"), ("hostname", "hostname"), ("sh", "a shell")):
        if not shutil.which(tool):
            return f"`{tool}` missing (install {package})"
    if not shutil.which("redis-server"):
        return "redis-server missing (apt-get install redis-server)"
    if postgres_bin() is None:
        return "PostgreSQL server binaries (initdb, postgres) missing under /usr/lib/postgresql/*/bin " \
               "(apt-get install postgresql, or set POSTGRES_BIN)"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no user `postgres` to run PostgreSQL as (it refuses to run as root)"
    probe = None
    try:
        probe = Network(["probe"])
        probe.partition("probe")
        probe.heal("probe")
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        detail = getattr(error, "stderr", None) or error
        return f"cannot create network namespaces, veth pairs and a bridge here: {str(detail).strip()}"
    finally:
        if probe is not None:
            probe.close()
    return None


def _run(*argv: str, timeout: float = 30) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=timeout).stdout


# -- the network -----------------------------------------------------------------------------------


@dataclass
class Host:
    name: str
    namespace: str
    address: str
    port: str  # its veth end on the bridge, in the switch namespace
    mac: str = ""


class Network:
    """A switch namespace with a bridge, and one namespace per host plugged into it.

    Built in the constructor; `close()` kills whatever still runs in the namespaces and deletes
    them (which deletes the veth pairs and the bridge with them). Safe to call twice.
    """

    def __init__(self, hosts: list[str]):
        self.tag = f"{os.getpid() % 100000}{secrets.token_hex(2)}"
        self.switch = f"mh-{self.tag}-sw"
        self.subnet = free_subnet()
        self.hosts: dict[str, Host] = {}
        self.namespaces: list[str] = []
        try:
            self._add_namespace(self.switch)
            _run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
            _run("ip", "-n", self.switch, "link", "set", "br0", "up")
            for number, name in enumerate(hosts, start=10):
                self._plug(name, str(self.subnet.network_address + number))
            for host in self.hosts.values():
                for other in self.hosts.values():
                    if other is not host:
                        _run("ip", "-n", host.namespace, "neigh", "replace", other.address, "lladdr", other.mac,
                             "dev", "eth0", "nud", "permanent")
        except BaseException:
            self.close()
            raise

    def _add_namespace(self, namespace: str) -> None:
        _run("ip", "netns", "add", namespace)
        self.namespaces.append(namespace)
        _run("ip", "-n", namespace, "link", "set", "lo", "up")

    def _plug(self, name: str, address: str) -> None:
        namespace, port = f"mh-{self.tag}-{name}", f"p-{name}"[:15]
        self._add_namespace(namespace)
        _run("ip", "link", "add", "eth0", "netns", namespace, "type", "veth", "peer", "name", port,
             "netns", self.switch)
        _run("ip", "-n", self.switch, "link", "set", port, "master", "br0")
        _run("ip", "-n", self.switch, "link", "set", port, "up")
        _run("ip", "-n", namespace, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
        _run("ip", "-n", namespace, "link", "set", "eth0", "up")
        mac = json.loads(_run("ip", "-j", "-n", namespace, "link", "show", "eth0"))[0]["address"]
        self.hosts[name] = Host(name, namespace, address, port, mac)

    def partition(self, name: str) -> None:
        """Cut `name` off: the bridge drops every frame from and to it, silently."""
        _run("bridge", "-n", self.switch, "link", "set", "dev", self.hosts[name].port, "state", "0")

    def heal(self, name: str) -> None:
        _run("bridge", "-n", self.switch, "link", "set", "dev", self.hosts[name].port, "state", "3")

    def command(self, name: str, argv: list[str], hostname: str | None = None) -> list[str]:
        """`argv` run inside host `name`'s namespace; with `hostname`, in a UTS namespace of its own
        under that host name (the beat's identity and the worker's `worker@%h` use it)."""
        wrapped = ["ip", "netns", "exec", self.hosts[name].namespace]
        if hostname:
            wrapped += ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hostname]
        return wrapped + list(argv)

    def pids(self, namespace: str) -> list[int]:
        try:
            return [int(pid) for pid in _run("ip", "netns", "pids", namespace).split()]
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            return []

    def close(self) -> None:
        """Kill every process left in our namespaces (ours, by construction), then delete them."""
        for namespace in self.namespaces:
            for pid in self.pids(namespace):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(self.pids(namespace) for namespace in self.namespaces):
            time.sleep(0.05)
        for namespace in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)
        self.namespaces = []


def used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network on an interface of the machine: root namespace and every named one."""
    outputs = [_run("ip", "-o", "-4", "addr", "show"), _run("ip", "-o", "-4", "route", "show")]
    for line in _run("ip", "netns", "list").splitlines():
        if line.split():
            try:
                outputs.append(_run("ip", "-n", line.split()[0], "-o", "-4", "addr", "show"))
            except subprocess.CalledProcessError:
                pass  # deleted meanwhile
    found = []
    for match in re.finditer(r"(\d+\.\d+\.\d+\.\d+(?:/\d+)?)", "\n".join(outputs)):
        try:
            found.append(ipaddress.ip_network(match.group(1), strict=False))
        except ValueError:
            pass
    return found


def free_subnet() -> ipaddress.IPv4Network:
    used = used_networks()
    for _ in range(200):
        candidate = ipaddress.ip_network(f"10.{random.randint(16, 250)}.{random.randint(0, 255)}.0/24")
        if not any(candidate.overlaps(network) for network in used if network.prefixlen > 0):
            return candidate
    raise RuntimeError("no free 10.X.Y.0/24 subnet found")


# -- the data host: Redis and PostgreSQL -----------------------------------------------------------


class DataHost:
    """Redis (append-only, in a temp dir) and a throwaway PostgreSQL cluster, both started inside the
    data namespace and listening on its address and on a unix socket in the temp dir."""

    def __init__(self, network: Network, name: str = DATA):
        self.network, self.name = network, name
        self.address = network.hosts[name].address
        self.directory = Path(tempfile.mkdtemp(prefix=f"mh-{network.tag}-data-"))
        self.directory.chmod(0o755)  # postgres must reach its directories inside
        self.redis_socket = self.directory / "redis" / "redis.sock"
        self.pg_data, self.pg_sockets = self.directory / "pgdata", self.directory / "pgsockets"
        self.processes: list[subprocess.Popen] = []

    def start(self) -> "DataHost":
        (self.directory / "redis").mkdir()
        self._spawn("redis", ["redis-server", "--bind", self.address, "--port", str(REDIS_PORT),
                              "--unixsocket", str(self.redis_socket), "--unixsocketperm", "700",
                              "--dir", str(self.directory / "redis"), "--appendonly", "yes", "--save", "",
                              "--protected-mode", "no", "--daemonize", "no"])
        postgres = pwd.getpwnam("postgres")
        for directory in (self.pg_data, self.pg_sockets):
            directory.mkdir(mode=0o700)
            os.chown(directory, postgres.pw_uid, postgres.pw_gid)
        binaries = postgres_bin()
        subprocess.run(["runuser", "-u", "postgres", "--", str(binaries / "initdb"), "-D", str(self.pg_data),
                        "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"],
                       check=True, capture_output=True, text=True, timeout=120)
        with (self.pg_data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {self.network.subnet} trust\n")
        self._spawn("postgres", ["runuser", "-u", "postgres", "--", str(binaries / "postgres"), "-D", str(self.pg_data),
                                 "-c", f"listen_addresses={self.address}", "-k", str(self.pg_sockets),
                                 "-c", f"port={POSTGRES_PORT}", "-c", "fsync=off", "-c", "synchronous_commit=off",
                                 "-c", "full_page_writes=off", "-c", "max_connections=200"])
        wait_until(self._redis_answers, 30, "Redis answered in the data namespace", self.logs)
        wait_until(self._postgres_answers, 60, "PostgreSQL answered in the data namespace", self.logs)
        connection = self.sql_connection("postgres")
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE {DATABASE}")
        finally:
            connection.close()
        return self

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.directory / f"{name}.log").open("w")
        try:
            self.processes.append(subprocess.Popen(self.network.command(self.name, argv), stdout=log,
                                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                   start_new_session=True))
        finally:
            log.close()

    def logs(self) -> str:
        return "\n".join(f"-- {path.name}:\n{path.read_text(errors='replace')[-2000:]}"
                         for path in sorted(self.directory.glob("*.log")))

    def _redis_answers(self) -> bool:
        import redis

        try:
            return bool(self.redis().ping())
        except (redis.RedisError, OSError):
            return False

    def _postgres_answers(self) -> bool:
        import psycopg2

        try:
            self.sql_connection("postgres").close()
            return True
        except psycopg2.OperationalError:
            return False

    # The observer's side: unix sockets, in the file system, never on the links.
    def redis(self, db: int = 0):
        import redis

        return redis.Redis(unix_socket_path=str(self.redis_socket), db=db, socket_timeout=5)

    def sql_connection(self, database: str = DATABASE):
        import psycopg2

        connection = psycopg2.connect(dbname=database, user="postgres", host=str(self.pg_sockets),
                                      port=POSTGRES_PORT, connect_timeout=3)
        connection.autocommit = True
        return connection

    def job_runs(self) -> list[dict]:
        """The run history, oldest first, times as aware datetimes (the columns of Project.job_runs)."""
        columns = ("id", "name", "task_id", "due_at", "sent_at", "started_at", "finished_at", "outcome",
                   "lateness_seconds", "summary")
        connection = self.sql_connection()
        try:
            with connection.cursor() as cursor:
                try:
                    cursor.execute(f"SELECT {', '.join(columns)} FROM job_runs ORDER BY id")
                except Exception:  # noqa: BLE001 - no table before the first migration
                    return []
                return [dict(zip(columns, row)) for row in cursor.fetchall()]
        finally:
            connection.close()

    def urls(self) -> dict[str, str]:
        return {"CELERY_BROKER_URL": f"redis://{self.address}:{REDIS_PORT}/0",
                "CELERY_RESULT_BACKEND": f"redis://{self.address}:{REDIS_PORT}/1",
                "DATABASE_URL": f"postgresql://postgres@{self.address}:{POSTGRES_PORT}/{DATABASE}"}

    def stop(self) -> None:
        """SIGINT: PostgreSQL's fast shutdown (SIGTERM would wait for every client), Redis' shutdown."""
        for process in self.processes:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGINT)  # its own session: runuser and postgres
                except ProcessLookupError:
                    pass
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        self.processes = []

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


# -- an app host: a project copy's worker and beat ---------------------------------------------------


def probe_jobs_code() -> str:
    from tests.test_beat_stalls import QUICK

    entries = "".join(
        f'    "{name}": {{"task": "{QUICK}", "schedule": _every(seconds={period}), '
        f'"options": {{"queue": "high_priority"}}, "policy": {{"overlap": "allow"}}}},\n'
        for name, period in PROBE_JOBS.items())
    return f"BEAT_SCHEDULE.update({{\n{entries}}})\n"


class AppHost:
    """One app host: a copy of the project whose worker and beat run in the host's namespace."""

    def __init__(self, network: Network, name: str, directory: Path, env: dict[str, str],
                 app_from: str | None = None):
        from tests.test_beat_stalls import add_jobs

        self.network, self.name = network, name
        self.project = Project(directory, env)
        if app_from:  # the app as it is at a git revision (read with git archive), for a before/after
            shutil.rmtree(self.project.root / "app")
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", app_from, "app"], check=True,
                                     capture_output=True, timeout=60).stdout
            subprocess.run(["tar", "-x", "-C", str(self.project.root)], input=archive, check=True, timeout=60)
        add_jobs(self.project, probe_jobs_code())

    def manager(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """`python celery_beat_manager.py ARGS` on this host, as its operator runs it."""
        return subprocess.run(self.network.command(self.name, [sys.executable, "celery_beat_manager.py", *args],
                                                   hostname=self.name),
                              cwd=self.project.root, env=self.project.env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def start(self, service: str) -> None:
        started = self.manager("start", "--service", service)
        if started.returncode != 0:
            raise AssertionError(f"{self.name}: start --service {service} failed ({started.returncode}):\n"
                                 f"{started.stdout}{started.stderr}\n{self.log('celery_worker.log')[-3000:]}"
                                 f"{self.log('celerybeat.log')[-3000:]}")

    def log(self, name: str) -> str:
        return self.project.log_text(name)

    def results(self) -> list[dict]:
        return self.project.task_results()

    def probe_results(self) -> list[dict]:
        from tests.test_beat_stalls import QUICK

        return [line for line in self.results() if line["name"] == QUICK]


@dataclass
class LogLine:
    at: datetime
    level: str
    process: str
    text: str

    def __str__(self) -> str:
        return f"{self.at.astimezone(timezone.utc):%H:%M:%S.%f}"[:-3] + f"Z {self.level}/{self.process} {self.text}"


def log_lines(text: str) -> list[LogLine]:
    """A Celery log's records (continuation lines, as of a traceback, joined to their record).

    Every process of the app logs in Asia/Shanghai time, whatever the host's zone: Django sets TZ
    from TIME_ZONE at start-up."""
    lines: list[LogLine] = []
    for raw in text.splitlines():
        match = LOG_TIME.match(raw)
        if match:
            at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=SHANGHAI)
            lines.append(LogLine(at, match.group(2), match.group(3), match.group(4)))
        elif lines:
            lines[-1].text += "\n" + raw
    return lines


# -- the lease, watched from outside ----------------------------------------------------------------


class LeaseWatcher(threading.Thread):
    """Polls beat:leader and the beats' heartbeats every 50 ms through Redis' unix socket; keeps
    every change of holder with its time, and each beat's latest tick (Redis server time)."""

    def __init__(self, data: DataHost):
        super().__init__(daemon=True)
        self.client = data.redis()
        self.changes: list[tuple[datetime, str | None]] = []
        self.ticks: dict[str, datetime] = {}  # identity -> its latest heartbeat
        self.errors = 0
        self._halt = threading.Event()

    def run(self) -> None:
        from app.scheduling.leader import HEARTBEAT_PREFIX, LEASE_KEY

        while not self._halt.is_set():
            try:
                holder = self.client.get(LEASE_KEY)
                holder = holder.decode() if holder else None
                if not self.changes or self.changes[-1][1] != holder:
                    self.changes.append((utc_now(), holder))
                for key in self.client.scan_iter(match=HEARTBEAT_PREFIX + "*", count=100):
                    fields = self.client.hmget(key, "id", "beat_ms")
                    if fields[0] and fields[1]:
                        self.ticks[fields[0].decode()] = datetime.fromtimestamp(int(fields[1]) / 1000, timezone.utc)
            except Exception:  # noqa: BLE001 - a watcher must outlive a hiccup; counted
                self.errors += 1
            self._halt.wait(0.05)

    def holder(self) -> str | None:
        return self.changes[-1][1] if self.changes else None

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def host_of(identity: str) -> str:
    return identity.split(":")[0]


def pid_of(identity: str) -> int:
    return int(identity.split(":")[1])


# -- the scenario -----------------------------------------------------------------------------------


@dataclass
class Send:
    at: datetime
    host: str
    job: str
    due: str  # HH:MM:SS, Asia/Shanghai, as beat logs it


@dataclass
class Outcome:
    """What the scenario did and left: times of its steps, the run history, each host's task results
    and logs, the lease's changes. Measures and checks are computed from it."""

    leader_timeout: float
    partition_seconds: float
    resume_wait: float = 90.0  # how long the scenario waits for the cut worker after the heal
    app_from: str | None = None
    first_leader: str = ""
    standby: str = ""
    ran_before_cut: dict[str, int] = field(default_factory=dict)
    cut_started: datetime | None = None
    cut_at: datetime | None = None
    heal_at: datetime | None = None
    kill_at: datetime | None = None
    killed: str = ""
    ended_at: datetime | None = None
    runs: list[dict] = field(default_factory=list)
    results: dict[str, list[dict]] = field(default_factory=dict)
    logs: dict[str, dict[str, str]] = field(default_factory=dict)  # host -> log name -> text
    backend_states: dict[str, str] = field(default_factory=dict)  # task id -> state in the result backend
    # Redis' view of the cut host's connections at moments of the partition: (label, [(port, cmd, idle s)])
    redis_clients: list[tuple[str, list[tuple[str, str, int]]]] = field(default_factory=list)
    lease_changes: list[tuple[datetime, str | None]] = field(default_factory=list)
    ticks: dict[str, datetime] = field(default_factory=dict)
    beat_tick_after_heal: datetime | None = None
    notes: list[str] = field(default_factory=list)

    # -- derived data --
    @property
    def cut_host(self) -> str:
        return host_of(self.first_leader)

    @property
    def other_host(self) -> str:
        return host_of(self.standby)

    def lines(self, host: str, log: str) -> list[LogLine]:
        return log_lines(self.logs.get(host, {}).get(log, ""))

    def sends(self) -> list[Send]:
        found = []
        for host in APP_HOSTS:
            for line in self.lines(host, "celerybeat.log"):
                match = SENDING.search(line.text)
                if match:
                    found.append(Send(line.at, host, match.group(1), match.group(3)))
        return sorted(found, key=lambda send: send.at)

    def sends_by(self, host: str, start: datetime | None, end: datetime | None) -> list[Send]:
        return [send for send in self.sends() if send.host == host and (start is None or send.at > start)
                and (end is None or send.at <= end)]

    def executed(self) -> dict[str, list[str]]:
        """task id -> the hosts whose worker finished it (one entry per finish)."""
        ran: dict[str, list[str]] = {}
        for host, lines in self.results.items():
            for line in lines:
                ran.setdefault(line["id"], []).append(host)
        return ran

    def probe_runs(self) -> list[dict]:
        return [run for run in self.runs if run["name"] in PROBE_JOBS]

    def sent_probe_runs(self) -> list[dict]:
        """Probe runs whose message was published: a publish time, or a send logged by a beat, or a start."""
        logged = {(send.job, send.due) for send in self.sends()}

        def published(run: dict) -> bool:
            due = run["due_at"] and (run["name"], shanghai_time(run["due_at"]))
            return bool(run["sent_at"] or run["started_at"] or due in logged)

        return [run for run in self.probe_runs() if run["task_id"] and published(run)]

    def unsent_probe_runs(self) -> list[dict]:
        sent = {run["id"] for run in self.sent_probe_runs()}
        return [run for run in self.probe_runs() if run["task_id"] and run["id"] not in sent]

    # -- measures (seconds; None when it never happened within the scenario) --
    def partition_takeover(self) -> float | None:
        first = next(iter(self.sends_by(self.other_host, self.cut_at, self.heal_at)), None)
        return seconds(self.cut_at, first.at) if first else None

    def partition_lease_takeover(self) -> float | None:
        at = next((at for at, holder in self.lease_changes
                   if self.cut_at and at >= self.cut_at and holder and host_of(holder) == self.other_host), None)
        return seconds(self.cut_at, at)

    def cut_host_sends(self) -> list[Send]:
        """Sends logged by the cut host's beat from the cut until the kill (the other beat leads then)."""
        return self.sends_by(self.cut_host, self.cut_at, self.kill_at or self.ended_at)

    def heal_to_next_task(self) -> float | None:
        """The heal to the first task the cut worker received after it (its log's `received` line)."""
        received = [line.at for line in self.lines(self.cut_host, "celery_worker.log")
                    if RECEIVED.search(line.text) and self.heal_at and line.at > self.heal_at]
        return seconds(self.heal_at, min(received)) if received else None

    def heal_to_next_new_task(self) -> float | None:
        """The heal to the start, on the cut worker, of the first run published after the heal."""
        if self.heal_at is None:
            return None
        mine = {line["id"] for line in self.results.get(self.cut_host, [])}
        started = [run["started_at"] for run in self.probe_runs() if run["task_id"] in mine and run["started_at"]
                   and run["sent_at"] and run["sent_at"] > self.heal_at]
        return seconds(self.heal_at, min(started)) if started else None

    def heal_to_beat_tick(self) -> float | None:
        return seconds(self.heal_at, self.beat_tick_after_heal)

    def noticed(self, host: str, log: str) -> LogLine | None:
        """The first warning or error a process of the cut host logged after the cut."""
        return next((line for line in self.lines(host, log) if self.cut_at and self.cut_at < line.at
                     and line.level in ("WARNING", "ERROR", "CRITICAL")), None)

    def kill_takeover(self) -> float | None:
        survivor = APP_B if host_of(self.killed) == APP_A else APP_A
        first = next(iter(self.sends_by(survivor, self.kill_at, None)), None) if self.kill_at else None
        return seconds(self.kill_at, first.at) if first else None

    def kill_lease_takeover(self) -> float | None:
        at = next((at for at, holder in self.lease_changes
                   if self.kill_at and at >= self.kill_at and holder and holder != self.killed), None)
        return seconds(self.kill_at, at)

    def duplicate_due_runs(self) -> list[tuple[str, datetime]]:
        keys = [(run["name"], run["due_at"]) for run in self.runs if run["due_at"]]
        return sorted({key for key in keys if keys.count(key) > 1})

    def duplicate_task_ids(self) -> dict[str, list[str]]:
        return {task_id: hosts for task_id, hosts in self.executed().items() if len(hosts) > 1}

    def lost_runs(self) -> list[dict]:
        """Probe runs published and never finished by any worker."""
        executed = self.executed()
        return [run for run in self.sent_probe_runs() if run["task_id"] not in executed]

    def cut_worker_reconnected(self) -> datetime | None:
        """When the cut host's worker was connected to the broker again after the heal."""
        if self.heal_at is None:
            return None
        return next((line.at for line in self.lines(self.cut_host, "celery_worker.log")
                     if line.at > self.heal_at and "Connected to redis" in line.text), None)

    def lost_runs_outside_the_reconnect(self) -> list[dict]:
        """Lost runs not published between the heal and RECONNECT_SLACK after the cut worker's
        reconnect: the moment its consumer tears the old channel down (see the multi-host test)."""
        reconnected = self.cut_worker_reconnected()
        if reconnected is None:
            return self.lost_runs()
        end = reconnected + timedelta(seconds=RECONNECT_SLACK)
        return [run for run in self.lost_runs() if not (run["sent_at"] and self.heal_at <= run["sent_at"] <= end)]

    def failures_logged(self) -> dict[str, str]:
        """task id -> the worker log's line saying it failed (on any host)."""
        found = {}
        for host in APP_HOSTS:
            for line in self.lines(host, "celery_worker.log"):
                match = FAILED.search(line.text)
                if match:
                    found[match.group(2)] = f"{host}: {line.text.splitlines()[0][:200]}"
        return found

    def success_recorded_as_failure(self) -> list[tuple[str, str, str]]:
        """(task id, host, how) of tasks whose body succeeded (task_results.log: SUCCESS) that the run
        history, the result backend or the worker's log records as failed."""
        by_task = {run["task_id"]: run for run in self.runs if run["task_id"]}
        logged = self.failures_logged()
        wrong = []
        for host, lines in self.results.items():
            for line in lines:
                if line["state"] != "SUCCESS":
                    continue
                task_id, run, state = line["id"], by_task.get(line["id"]), self.backend_states.get(line["id"])
                if run and run["outcome"] != "success":
                    wrong.append((task_id, host, f"job_runs outcome {run['outcome']}: {run['summary']}"))
                if state and state != "SUCCESS":
                    wrong.append((task_id, host, f"result backend state {state}"))
                if task_id in logged:
                    wrong.append((task_id, host, logged[task_id]))
        return wrong

    def results_not_stored(self) -> list[str]:
        """Task ids that finished with SUCCESS whose result the backend does not hold."""
        return [line["id"] for lines in self.results.values() for line in lines
                if line["state"] == "SUCCESS" and line["id"] not in self.backend_states]

    def excerpt(self, host: str, log: str, start: datetime | None, end: datetime | None, limit: int = 40,
                quiet: tuple[str, ...] = ("Sending due task", "] received", "] succeeded")) -> str:
        """The log's lines between two times, routine ones left out, at most `limit`."""
        if start is None:
            return ""
        chosen = [line for line in self.lines(host, log) if start <= line.at and (end is None or line.at <= end)
                  and not any(word in line.text for word in quiet)]
        text = [str(line).splitlines()[0][:300] for line in chosen]
        return "\n".join(text[:limit] + ([f"... {len(text) - limit} more"] if len(text) > limit else []))

    def report(self) -> str:
        def number(value, unit=" s"):
            return "never" if value is None else f"{value:.2f}{unit}"

        def noticed(line: LogLine | None) -> str:
            if line is None:
                return "never (no warning or error logged)"
            return f"{number(seconds(self.cut_at, line.at))} (target <= {NOTICE_TARGET:g} s: " \
                   f"{line.text.splitlines()[0][:160]})"

        timeout = self.leader_timeout
        cut = self.cut_host
        beat_noticed, worker_noticed = self.noticed(cut, "celerybeat.log"), self.noticed(cut, "celery_worker.log")
        unsent, wrong = self.unsent_probe_runs(), self.success_recorded_as_failure()
        lines = [
            f"multi-host partition: BEAT_LEADER_TIMEOUT={timeout:g} s, {cut} cut off {self.partition_seconds:g} s "
            "(bridge port disabled: frames dropped silently)"
            + (f", app from {self.app_from}" if self.app_from else ""),
            f"  tasks before the cut: " + ", ".join(f"{host} {count}" for host, count in self.ran_before_cut.items()),
            f"  takeover after the partition: first send {number(self.partition_takeover())}, "
            f"lease {number(self.partition_lease_takeover())} (target <= {timeout:g} s)",
            f"  cut beat ({cut}) noticed: {noticed(beat_noticed)}",
            f"  cut worker ({cut}) noticed: {noticed(worker_noticed)}",
            f"  sends by the cut host from the cut to the kill: {len(self.cut_host_sends())}",
            f"  heal to the cut worker's next task: received {number(self.heal_to_next_task())}, "
            f"first run published after the heal started {number(self.heal_to_next_new_task())} "
            f"(target <= {RESUME_TARGET:g} s)",
            f"  heal to the cut beat's next heartbeat: {number(self.heal_to_beat_tick())}",
            f"  takeover after kill -9 of {self.killed or '?'}: first send {number(self.kill_takeover())}, "
            f"lease {number(self.kill_lease_takeover())} (target <= {timeout:g} s)",
            f"  duplicates: {len(self.duplicate_due_runs())} due runs recorded twice, "
            f"{len(self.duplicate_task_ids())} task ids run twice",
            f"  lost runs: {len(self.lost_runs())} published and never run "
            f"(of {len(self.sent_probe_runs())} published; "
            f"{len(self.lost_runs()) - len(self.lost_runs_outside_the_reconnect())} at the cut worker's reconnect); {len(unsent)} recorded and never published "
            f"({', '.join(sorted({run['outcome'] for run in unsent})) or 'none'})",
            f"  succeeded but recorded as failed: {len(wrong)}"
            + "".join(f"\n    {task_id} on {host}: {how}" for task_id, host, how in wrong[:5]),
            f"  succeeded, no result in the backend: {len(self.results_not_stored())}",
        ]
        for label, value, target in (("partition takeover/BEAT_LEADER_TIMEOUT", self.partition_takeover(), 1.0),
                                     ("kill -9 takeover/BEAT_LEADER_TIMEOUT", self.kill_takeover(), 1.0),
                                     ("heal-to-next-task/10 s", self.heal_to_next_task(), 1.0)):
            base = RESUME_TARGET if label.startswith("heal") else timeout
            lines.append(f"  ratio {label}: {'n/a' if value is None else f'{value / base:.2f}'} (target <= {target})")
        partition, kill = self.partition_takeover(), self.kill_takeover()
        if partition is not None and kill:
            lines.append(f"  ratio partition takeover/kill -9 takeover (same run): {partition / kill:.2f}")
        for label, clients in self.redis_clients:
            lines.append(f"  Redis connections from {cut} {label}: {len(clients)} ("
                         + ", ".join(f"{cmd} idle {idle}s" for _, cmd, idle in clients) + ")")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    def log_report(self) -> str:
        """What the cut host's processes logged from the cut until a while after the heal."""
        if self.heal_at is None:
            return ""
        end = self.heal_at + timedelta(seconds=max(20.0, (self.heal_to_next_task() or 60.0) + 5))
        parts = []
        for log in ("celerybeat.log", "celery_worker.log"):
            parts.append(f"-- {self.cut_host} {log}, {self.cut_at:%H:%M:%S}Z (cut) .. heal {self.heal_at:%H:%M:%S}Z + "
                         f"{(end - self.heal_at).total_seconds() if end else 0:.0f} s:\n"
                         + self.excerpt(self.cut_host, log, self.cut_started, end))
        return "\n".join(parts)


def shanghai_time(moment: datetime) -> str:
    return f"{moment.astimezone(SHANGHAI):%H:%M:%S}"


def seconds(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else (end - start).total_seconds()


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_scenario(leader_timeout: float = LEADER_TIMEOUT, partition_seconds: float = PARTITION_SECONDS,
                 resume_wait: float = 90.0, app_from: str | None = None, keep: bool = False,
                 say=progress) -> Outcome:
    """Build the network, run the scenario, tear everything down (even on failure); what it left.

    Every teardown step is a callback of one ExitStack: each runs even when one before it fails.
    """
    outcome = Outcome(leader_timeout, partition_seconds, resume_wait, app_from)
    with ExitStack() as teardown:
        scratch = Path(tempfile.mkdtemp(prefix="mh-hosts-"))
        teardown.callback(lambda: say(f"kept: {scratch}") if keep else shutil.rmtree(scratch, ignore_errors=True))
        network = Network([DATA, *APP_HOSTS])
        teardown.callback(network.close)  # kills whatever is left in the namespaces, deletes them
        say(f"network {network.subnet} in namespaces mh-{network.tag}-*; starting Redis and PostgreSQL")
        data = DataHost(network)
        teardown.callback(lambda: say(f"kept: {data.directory}") if keep else data.remove())
        teardown.callback(data.stop)
        data.start()
        env = {**data.urls(), "BEAT_LEADER_TIMEOUT": f"{leader_timeout:g}", "LOG_LEVEL": "info"}
        hosts: dict[str, AppHost] = {}
        for name in APP_HOSTS:
            (scratch / name).mkdir()
            hosts[name] = AppHost(network, name, scratch / name, env, app_from)
            teardown.callback(hosts[name].project.kill_all)
            teardown.callback(_collect_host, outcome, hosts[name])
        teardown.callback(_collect_history, outcome, data)
        teardown.callback(_collect_backend, outcome, data)
        watcher = LeaseWatcher(data)
        watcher.start()
        teardown.callback(_collect_lease, outcome, watcher)
        _scenario(outcome, network, data, hosts, watcher, say)
    return outcome


def clients_from(data: DataHost, address: str) -> list[tuple[str, str, int]]:
    """Redis' connections from `address`, as the server sees them: (port, last command, idle seconds)."""
    try:
        return sorted((client["addr"].rpartition(":")[2], client.get("cmd", "?"), int(client.get("idle", 0)))
                      for client in data.redis().client_list() if client["addr"].rpartition(":")[0] == address)
    except Exception as error:  # noqa: BLE001 - a diagnostic only
        return [("?", f"CLIENT LIST failed: {error}", 0)]


def _collecting(step):
    """A teardown step that reads what the scenario left: its failure is noted, never raised (it
    would hide the scenario's own error, and the teardown steps after it must run anyway)."""
    def collect(outcome: Outcome, *args) -> None:
        try:
            step(outcome, *args)
        except Exception as error:  # noqa: BLE001
            outcome.notes.append(f"{step.__name__.lstrip('_')}: {type(error).__name__}: {error}")
    return collect


@_collecting
def _collect_host(outcome: Outcome, host: "AppHost") -> None:
    outcome.results[host.name] = host.results()
    outcome.logs[host.name] = {log: host.log(log) for log in ("celerybeat.log", "celery_worker.log")}


@_collecting
def _collect_history(outcome: Outcome, data: DataHost) -> None:
    outcome.runs = data.job_runs()


@_collecting
def _collect_backend(outcome: Outcome, data: DataHost) -> None:
    client = data.redis(1)  # CELERY_RESULT_BACKEND's database
    for key in client.scan_iter(match=RESULT_KEY + "*", count=500):
        meta = client.get(key)
        if meta:
            outcome.backend_states[key.decode().removeprefix(RESULT_KEY)] = json.loads(meta).get("status")


@_collecting
def _collect_lease(outcome: Outcome, watcher: LeaseWatcher) -> None:
    watcher.stop()
    outcome.lease_changes, outcome.ticks = list(watcher.changes), dict(watcher.ticks)


def on_each_host(hosts: dict[str, AppHost], step) -> None:
    """`step(host)` on every app host at once, as their operators would; the first error re-raised here."""
    errors: list[BaseException] = []

    def run(host: AppHost) -> None:
        try:
            step(host)
        except BaseException as error:  # noqa: BLE001 - re-raised below, in the caller's thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(host,)) for host in hosts.values()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _scenario(outcome: Outcome, network: Network, data: DataHost, hosts: dict[str, AppHost],
              watcher: LeaseWatcher, say) -> None:
    timeout = outcome.leader_timeout
    first, second = hosts[APP_A], hosts[APP_B]

    say("starting a worker on each app host")
    on_each_host(hosts, lambda host: host.start("worker"))
    say("starting beat on appa, then (once it leads) on appb")
    first.start("beat")
    outcome.first_leader = wait_until(lambda: (h := watcher.holder()) and host_of(h) == APP_A and h, 60,
                                      "appa's beat took the lease", lambda: first.log("celerybeat.log")[-3000:])
    second.start("beat")
    outcome.standby = wait_until(lambda: next((i for i in watcher.ticks if host_of(i) == APP_B), None), 30,
                                 "appb's beat ticked", lambda: second.log("celerybeat.log")[-3000:])

    wait_until(lambda: all(len(host.probe_results()) >= 2 for host in hosts.values()), 90,
               "tasks ran on both workers", lambda: {h.name: len(h.probe_results()) for h in hosts.values()})
    leader = watcher.holder()
    if leader != outcome.first_leader:  # partition whichever host leads now
        outcome.notes.append(f"the lease moved before the cut: {outcome.first_leader} -> {leader}")
        outcome.first_leader = leader
        outcome.standby = next(i for i in watcher.ticks if host_of(i) != host_of(leader))
    cut = host_of(outcome.first_leader)
    outcome.ran_before_cut = {name: len(host.probe_results()) for name, host in hosts.items()}

    say(f"partition: {cut} cut off for {outcome.partition_seconds:g} s")
    outcome.cut_started = utc_now()
    network.partition(cut)
    outcome.cut_at = utc_now()
    address, length = network.hosts[cut].address, outcome.partition_seconds
    try:
        # Redis' view of the cut host's connections (a diagnostic): at the cut, soon after, just before the heal.
        for offset in (0.0, min(5.0, length / 4), max(0.0, length - 1)):
            time.sleep(max(0.0, offset - seconds(outcome.cut_at, utc_now())))
            outcome.redis_clients.append((f"cut + {offset:g} s", clients_from(data, address)))
        time.sleep(max(0.0, length - seconds(outcome.cut_at, utc_now())))
    finally:
        network.heal(cut)
        outcome.heal_at = utc_now()
    say(f"healed; waiting for {cut}'s worker to take a task again (up to {outcome.resume_wait:g} s)")

    cut_host = hosts[cut]

    def cut_worker_resumed():
        for line in log_lines(cut_host.log("celery_worker.log")):
            if line.at > outcome.heal_at and RECEIVED.search(line.text):
                return line
        return None

    try:
        wait_until(cut_worker_resumed, outcome.resume_wait, "the cut worker received a task after the heal")
    except AssertionError as error:
        outcome.notes.append(str(error).splitlines()[0])
    old_identity = outcome.first_leader

    def cut_beat_ticked():
        tick = watcher.ticks.get(old_identity)
        return tick if tick and tick > outcome.heal_at else None

    try:
        outcome.beat_tick_after_heal = wait_until(cut_beat_ticked, 30, "the cut beat ticked after the heal")
    except AssertionError as error:
        outcome.notes.append(str(error).splitlines()[0])

    # The wait above ends just after a tick of the cut beat (now the standby): killing then would
    # always fall at the same point of its tick cycle. A crash comes at any point of it.
    from app.scheduling.leader import lease_timing

    tick, _ = lease_timing(timeout, 5.0)  # beat's tick: min(5 s, BEAT_LEADER_TIMEOUT / 4)
    time.sleep(random.uniform(0, tick))
    leader = watcher.holder()
    if not leader:
        leader = wait_until(watcher.holder, 2 * timeout, "a beat holds the lease before the kill")
    outcome.killed = leader
    namespace = network.hosts[host_of(leader)].namespace
    if pid_of(leader) not in network.pids(namespace):  # only ever a process of ours
        raise AssertionError(f"the lease holder {leader} is no process in {namespace}")
    say(f"kill -9 of the leader {leader}")
    os.kill(pid_of(leader), signal.SIGKILL)
    outcome.kill_at = utc_now()
    survivor = hosts[APP_B if host_of(leader) == APP_A else APP_A]

    def survivor_sent():
        sent = [line for line in log_lines(survivor.log("celerybeat.log"))
                if line.at > outcome.kill_at and SENDING.search(line.text)]
        return len(sent) >= 3 and sent

    try:
        wait_until(survivor_sent, 3 * timeout + 30, "the survivor sent three runs after the kill")
    except AssertionError as error:
        outcome.notes.append(str(error).splitlines()[0])

    say("stopping the beats, letting the workers finish, stopping the workers")
    on_each_host(hosts, lambda host: host.manager("stop", "--service", "beat", "--timeout", "30"))
    executed = lambda: {line["id"] for host in hosts.values() for line in host.results()}  # noqa: E731

    def drained():
        published = [run for run in data.job_runs() if run["name"] in PROBE_JOBS and run["sent_at"]]
        return all(run["task_id"] in executed() for run in published)

    try:
        wait_until(drained, 30, "every published probe run finished")
    except AssertionError as error:
        outcome.notes.append(str(error).splitlines()[0])
    on_each_host(hosts, lambda host: host.manager("stop", "--service", "worker", "--timeout", "30"))
    outcome.ended_at = utc_now()
