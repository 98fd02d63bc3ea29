"""Beat: our scheduler's tick against stock django-celery-beat's, and leader failover, in one run.

    python bench/beat.py [--sizes 15,1000,10000] [--due 10] [--ticks 100] [--rounds 3]
                         [--kills 10] [--leader-timeout 10] [--postgres] [--redis [URL]] [--no-failover] [--keep]

1. Tick cost. For each size, creates that many PeriodicTask rows in a scratch database (half daily
   crontabs, half hourly to daily intervals, none due within the next 45 minutes) of which --due
   (at most a third of the size) are overdue. Each of --rounds rounds constructs both
   `DatabaseScheduler(app=...)` and `ScheduleTableScheduler(app=..., table={})`, ticks each once
   untimed (the initial heap; ours also takes the lease and reloads), then times --ticks calls of
   `tick()` of each, taking turns tick by tick so both see the same load on the machine. Each
   publishes every due run for real (ours records it in job_runs first); the other ticks are idle.
   Between rounds the due rows are made due again, the round's job_runs rows deleted and the queues
   purged. Prints per size both means and p95s, sending and idle ticks apart, and ours/stock
   (target <= 1.2). Our tick adds the lease script, one Redis round trip (two on a sending tick):
   that is the point.
2. Failover. Starts two `celery beat` processes of a copy of the project (BEAT_LEADER_TIMEOUT=
   --leader-timeout), then --kills times: SIGKILLs the holder of "beat:leader", polls the key every
   50 ms until the other beat holds it, and starts a fresh standby. Prints each failover time, the
   max and mean, and max/BEAT_LEADER_TIMEOUT (target <= 1.0).

Runs on SQLite and the embedded broker in a scratch directory; --postgres uses a scratch database on
TEST_POSTGRES_ADMIN_URL's server, --redis the machine's Redis (database 12 unless the URL says
otherwise; that database alone is flushed, at the start and the end). A DATABASE_URL or
CELERY_BROKER_URL in the environment or .env is ignored, so nothing of a real deployment is touched.
"""

import argparse
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
DATABASE = "bench_beat"
DEFAULT_REDIS = "redis://127.0.0.1:6379/12"
TARGET_RATIO = 1.2
TARGET_FAILOVER = 1.0
SHANGHAI = ZoneInfo("Asia/Shanghai")
QUEUE = "low_priority"
TASKS = ("app.tasks.file_tasks.cleanup_temp_files", "app.tasks.maintenance_tasks.archive_old_data",
         "app.tasks.report_tasks.generate_daily_report", "app.tasks.file_tasks.cleanup_logs")
INTERVALS = (("hours", 1), ("hours", 6), ("hours", 12), ("days", 1))
# No row other than the due ones falls due within this long of its seeding: every send is planned.
QUIET = timedelta(minutes=45)
HISTORY_ROWS = 50_000
POLL = 0.05


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="15,1000,10000", help="numbers of periodic tasks, comma-separated")
    parser.add_argument("--due", type=int, default=10, help="overdue rows per round (at most a third of the size)")
    parser.add_argument("--ticks", type=int, default=100, help="timed ticks per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each scheduler per size")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--leader-timeout", type=float, default=10.0, help="BEAT_LEADER_TIMEOUT of the beats")
    parser.add_argument("--postgres", action="store_true", help="a scratch PostgreSQL database instead of SQLite")
    parser.add_argument("--redis", nargs="?", const=DEFAULT_REDIS, metavar="URL",
                        help=f"the machine's Redis instead of the embedded broker (default {DEFAULT_REDIS})")
    parser.add_argument("--no-failover", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (beat logs) at the end")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]

    scratch = Path(tempfile.mkdtemp(prefix="bench-beat-"))
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "BEAT_LEADER_TIMEOUT"):
        os.environ.pop(name, None)
    os.environ.update(VAR_DIR=str(scratch / "var"), LOGS_DIR=str(scratch / "logs"), APP_ENV_FILE="")
    if args.redis:
        os.environ.update(CELERY_BROKER_URL=args.redis, CELERY_RESULT_BACKEND=args.redis)
    admin = None
    if args.postgres:
        from scratch_postgres import admin_connection, recreate_database

        admin, base = admin_connection()
        recreate_database(admin, DATABASE)
        os.environ["DATABASE_URL"] = f"{base}/{DATABASE}"
    sys.path.insert(0, str(ROOT))
    from app.core.broker import EmbeddedBroker, redis_client
    from app.core.config import get_settings

    settings = get_settings()
    broker = EmbeddedBroker(settings) if settings.uses_embedded_broker else None
    if broker:
        broker.start()
    client = redis_client(settings.broker_url)
    client.flushdb()  # the embedded broker's scratch data, or the one --redis database
    try:
        print(f"broker {settings.broker_url}, database {settings.sqlalchemy_url}")
        tick_results = bench_ticks(sizes, args, client)
        report_ticks(tick_results, args)
        if not args.no_failover:
            times = bench_failover(args, settings, scratch, client)
            report_failover(times, args.leader_timeout)
    finally:
        client.flushdb()
        if broker:
            broker.stop()
        if admin is not None:
            from django.db import connections

            connections.close_all()
            from app.core.database import engine

            engine.sa_engine.dispose()
            recreate_database(admin, DATABASE, drop_only=True)
            admin.close()
        if args.keep:
            print(f"scratch directory kept: {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)


# -- 1. tick cost -----------------------------------------------------------------------------


def bench_ticks(sizes: list[int], args, client) -> list[dict]:
    from app.core.migrations import migrate_all
    from app.tasks.celery_app import app as celery_app

    migrate_all()
    seed_history(sizes, args.due)
    lease = lease_round_trip(client)
    results = []
    for size in sizes:
        due = max(1, min(args.due, size // 3))
        progress(f"{size} periodic tasks, {due} due: seeding")
        due_rows = seed_schedule(size, due)
        timings: dict[str, list[tuple[float, bool]]] = {"stock": [], "ours": []}
        loaded, published = {}, 0
        for round_number in range(args.rounds):
            make_due(due_rows)
            ticks, loaded, sent = run_round(celery_app, args.ticks, first="stock" if round_number % 2 == 0 else "ours")
            for kind in timings:
                timings[kind] += ticks[kind]
            published += sent
            assert sent == 2 * due, f"{sent} messages published for {due} due runs by each scheduler"
            progress(f"  round {round_number + 1}: " + ", ".join(
                f"{kind} {statistics.fmean(t for t, _ in ticks[kind]) * 1000:.2f} ms/tick" for kind in timings))
        results.append({"size": size, "due": due, "loaded": loaded, "timings": timings, "published": published,
                        "lease": lease})
    return results


def seed_history(sizes: list[int], due: int) -> None:
    """Finished runs of the bench's job names from the last 90 days, so job_runs is not empty."""
    from sqlalchemy import insert

    from app.core.database import engine
    from app.models import JobRun
    from app.models.base import utcnow

    rng = random.Random(0)
    names = [due_name(j) for j in range(due)] + [row_name(i) for i in range(max(sizes))]
    now = utcnow()
    rows = []
    for n in range(HISTORY_ROWS):
        due_at = (now - timedelta(days=1, seconds=rng.uniform(0, 89 * 86400))).replace(microsecond=n % 1_000_000)
        rows.append({"name": rng.choice(names), "task_id": f"history-{n}", "due_at": due_at, "sent_at": due_at,
                     "started_at": due_at, "finished_at": due_at + timedelta(seconds=5), "outcome": "success",
                     "lateness_seconds": 0.1})
    with engine.sa_engine.begin() as connection:
        for start in range(0, len(rows), 5000):
            connection.execute(insert(JobRun), rows[start:start + 5000])


def due_name(j: int) -> str:
    return f"bench-due-{j:02d}"


def row_name(i: int) -> str:
    return f"bench-{i:05d}"


def seed_schedule(size: int, due: int) -> dict[str, tuple]:
    """Replace every periodic task with `size` bench rows; the due rows' (schedule kind, slot)."""
    from django.utils import timezone
    from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask, PeriodicTasks

    clear_schedule(PeriodicTask)
    rng = random.Random(size)
    now = timezone.now()
    minute = now.astimezone(SHANGHAI).replace(second=0, microsecond=0)
    crontabs: dict[tuple[int, int], CrontabSchedule] = {}

    def daily(at: datetime) -> CrontabSchedule:
        key = (at.hour, at.minute)
        if key not in crontabs:
            crontabs[key], _ = CrontabSchedule.objects.get_or_create(
                minute=str(at.minute), hour=str(at.hour), day_of_week="*", day_of_month="*", month_of_year="*",
                timezone=SHANGHAI)
        return crontabs[key]

    intervals = {spec: IntervalSchedule.objects.get_or_create(every=spec[1], period=spec[0])[0] for spec in INTERVALS}
    rows, due_rows = [], {}

    def row(name: str, **schedule) -> PeriodicTask:
        return PeriodicTask(name=name, task=rng.choice(TASKS), queue=QUEUE, expire_seconds=3600, enabled=True,
                            **schedule)

    for i in range(size - due):
        if i % 2 == 0:  # a daily crontab whose next slot is 2 h to 24 h away: it ran at its last one
            slot = minute + timedelta(minutes=rng.randint(120, 24 * 60 - 5))
            rows.append(row(row_name(i), crontab=daily(slot), last_run_at=slot - timedelta(days=1, seconds=-10)))
        else:
            spec = rng.choice(INTERVALS)
            every = timedelta(**{spec[0]: spec[1]})
            ran = now - (every - QUIET) * rng.random()
            rows.append(row(row_name(i), interval=intervals[spec], last_run_at=ran))
    for j in range(due):
        if j % 2 == 0:  # hourly, its hour up a few seconds ago
            due_rows[due_name(j)] = ("interval", timedelta(hours=1, seconds=j + 1))
            rows.append(row(due_name(j), interval=intervals[("hours", 1)], last_run_at=now - timedelta(hours=2)))
        else:  # daily at a minute that has just passed, last run yesterday
            slot = minute - timedelta(minutes=j // 2 + 1)
            due_rows[due_name(j)] = ("crontab", slot)
            rows.append(row(due_name(j), crontab=daily(slot), last_run_at=slot - timedelta(days=1)))
    PeriodicTask.objects.bulk_create(rows, batch_size=500)
    PeriodicTasks.update_changed()
    return due_rows


def clear_schedule(*models) -> None:
    """Delete every row of `models` in one statement each, then mark the schedule changed once.

    QuerySet.delete() sends django-celery-beat's pre_delete signal per row, each one an
    update_or_create of PeriodicTasks in its own transaction: 10,000 rows took 78 s on PostgreSQL.
    """
    from django.db import connection
    from django_celery_beat.models import PeriodicTasks

    with connection.cursor() as cursor:
        for model in models:
            cursor.execute(f"DELETE FROM {connection.ops.quote_name(model._meta.db_table)}")
    PeriodicTasks.update_changed()


def make_due(due_rows: dict[str, tuple]) -> None:
    """Make the due rows due again, as they were before the previous round sent them."""
    from django.utils import timezone
    from django_celery_beat.models import PeriodicTask

    now = timezone.now()
    for name, (kind, value) in due_rows.items():
        last_run = now - value if kind == "interval" else value - timedelta(days=1)
        PeriodicTask.objects.filter(name=name).update(last_run_at=last_run, total_run_count=0)


def run_round(celery_app, ticks: int, first: str) -> tuple[dict, dict, int]:
    """Construct both schedulers, tick each once untimed, then time `ticks` ticks of each, taking
    turns tick by tick (`first` leads each pair) so both see the same load on the machine.

    ({kind: [(seconds, sent)]}, {kind: entries loaded}, messages published by both)
    """
    from django_celery_beat.schedulers import DatabaseScheduler
    from sqlalchemy import delete, func, select

    from app.core.database import engine
    from app.models import JobRun
    from app.scheduling.scheduler import ScheduleTableScheduler
    from app.services.job_runs import SENDING

    with engine.sa_engine.connect() as connection:
        history_end = connection.scalar(select(func.max(JobRun.id)))
    schedulers = {"stock": DatabaseScheduler(app=celery_app)}  # first: it installs its celery.backend_cleanup row
    schedulers["ours"] = ScheduleTableScheduler(app=celery_app, table={})
    order = [first, "ours" if first == "stock" else "stock"]
    timed = {kind: [] for kind in schedulers}
    try:
        # Ours first: its first tick reads every row afresh, before stock's first send writes one.
        schedulers["ours"].tick()
        schedulers["stock"].tick()
        assert schedulers["ours"].leadership.leading, "our scheduler did not take the lease"
        for _ in range(ticks):
            for kind in order:
                started = time.perf_counter()
                interval = schedulers[kind].tick()
                timed[kind].append((time.perf_counter() - started, interval == 0))
        assert schedulers["ours"].leadership.leading, "our scheduler lost the lease"
        loaded = {kind: len(scheduler._schedule) for kind, scheduler in schedulers.items()}
    finally:
        for scheduler in schedulers.values():
            scheduler.close()
            scheduler._finalize.cancel()
    published = celery_app.control.purge()
    with engine.sa_engine.begin() as connection:
        recorded = connection.scalar(select(func.count()).select_from(JobRun).where(
            JobRun.id > history_end, JobRun.outcome.in_((SENDING, "sent"))))
        connection.execute(delete(JobRun).where(JobRun.id > history_end))
    assert recorded == published // 2, f"ours recorded {recorded} sent runs, published {published} in all"
    return timed, loaded, published


def lease_round_trip(client, calls: int = 500) -> float:
    """Mean seconds of one lease script call (take/extend the lease, write the heartbeat)."""
    from app.scheduling.leader import Leadership

    leadership = Leadership(client, 30, 5)
    leadership.renew()
    started = time.perf_counter()
    for _ in range(calls):
        leadership.renew()
    elapsed = (time.perf_counter() - started) / calls
    leadership.release()
    client.delete(leadership.heartbeat_key)
    return elapsed


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(0.95 * len(ordered)) - 1]


def report_ticks(results: list[dict], args) -> None:
    print("scheduler tick cost (ms/tick; first tick after start untimed)")
    for result in results:
        size, due = result["size"], result["due"]
        loaded = result["loaded"]
        print(f"{size} periodic tasks ({loaded['stock']} loaded by stock, {loaded['ours']} by ours; {due} due per "
              f"round, {args.ticks} ticks x {args.rounds} rounds each; {result['published']} messages published):")
        means, idle_means, sending_means = {}, {}, {}
        for kind, label in (("stock", "stock DatabaseScheduler:   "), ("ours", "ours ScheduleTableScheduler:")):
            timings = result["timings"][kind]
            every = [t for t, _ in timings]
            sending = [t for t, sent in timings if sent]
            idle = [t for t, sent in timings if not sent]
            means[kind] = statistics.fmean(every)
            sending_means[kind], idle_means[kind] = statistics.fmean(sending), statistics.fmean(idle)
            print(f"  {label} {means[kind] * 1000:7.2f} ms/tick, median {statistics.median(every) * 1000:6.2f}, "
                  f"p95 {p95(every) * 1000:7.2f} ms "
                  f"(sending {sending_means[kind] * 1000:6.2f} ms x {len(sending)}, "
                  f"idle {idle_means[kind] * 1000:6.2f} ms x {len(idle)})")
        print(f"  ratio ours/stock (mean ms/tick): {means['ours'] / means['stock']:.2f} (target <= {TARGET_RATIO}); "
              f"idle ticks {idle_means['ours'] / idle_means['stock']:.2f}, "
              f"sending ticks {sending_means['ours'] / sending_means['stock']:.2f}")
    print(f"one lease script call (Redis round trip): {results[0]['lease'] * 1000:.3f} ms")


# -- 2. failover ------------------------------------------------------------------------------


def bench_failover(args, settings, scratch: Path, client) -> list[float]:
    from django.db import connections
    from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask
    from sqlalchemy import delete

    from app.core.database import engine
    from app.models import JobRun
    from app.scheduling.leader import LEASE_KEY, lease_timing
    from tests.support.project import Project

    progress("failover: clearing the tick bench's rows")
    # The copy's beats sync its own schedule table into this database; the tick bench's rows go,
    # schedules included: with its ~1,300 crontabs each full reload took 1-2 s (django-celery-beat
    # #947: DISTINCT timezone names come back one per row), delaying a new leader's next renewal.
    clear_schedule(PeriodicTask, CrontabSchedule, IntervalSchedule)
    with engine.sa_engine.begin() as connection:
        connection.execute(delete(JobRun))
    connections.close_all()
    client.flushdb()

    extra_env = {"VAR_DIR": str(scratch / "var"), "LOGS_DIR": str(scratch / "failover-logs"), "APP_ENV_FILE": "",
                 "CELERY_BROKER_URL": settings.broker_url, "CELERY_RESULT_BACKEND": settings.result_backend_url,
                 "BEAT_LEADER_TIMEOUT": str(args.leader_timeout)}
    if settings.database_url:
        extra_env["DATABASE_URL"] = settings.database_url
    project = Project(scratch / "failover", extra_env)
    beats = Beats(project, scratch / "failover-logs", client)
    interval, _ = lease_timing(args.leader_timeout, 5)
    rng = random.Random(1)
    times = []
    try:
        progress("failover: starting two beats")
        first = beats.start()
        wait_for(lambda: beats.holder_pid() == first.pid, 60, "the first beat took the lease", beats)
        beats.wait_standby(beats.start())
        for kill in range(1, args.kills + 1):
            time.sleep(rng.uniform(0, interval))  # a kill at any point of the leader's renewal cycle
            holder, lease_left = client.get(LEASE_KEY), client.pttl(LEASE_KEY) / 1000
            pid = pid_of(holder)
            assert pid in beats.running, f"the lease holder {holder!r} is not one of this bench's beats"
            ticked = beats.tick_age(pid)
            os.kill(pid, signal.SIGKILL)
            killed = time.perf_counter()
            while (now_held := client.get(LEASE_KEY)) in (None, holder):
                if time.perf_counter() - killed > 3 * args.leader_timeout + 30:
                    raise SystemExit(f"no standby took the lease within {3 * args.leader_timeout + 30:.0f} s")
                time.sleep(POLL)
            times.append(time.perf_counter() - killed)
            beats.running.pop(pid).wait()
            assert pid_of(now_held) in beats.running, f"the lease went to {now_held!r}, not the standby"
            progress(f"kill {kill}: pid {pid} (last tick {ticked:.2f} s before, lease left {lease_left:.2f} s) "
                     f"-> pid {pid_of(now_held)} in {times[-1]:.2f} s")
            beats.wait_standby(beats.start())
    finally:
        beats.stop_all()
    errors = beats.log_problems()
    if errors:
        print(f"beat log lines with ERROR/CRITICAL/Traceback: {len(errors)}, first: {errors[0]}")
    return times


def pid_of(holder: bytes) -> int:
    return int(holder.decode().rsplit(":", 2)[1])


def wait_for(condition, timeout: float, what: str, beats: "Beats") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        beats.check_alive()
        time.sleep(POLL)
    raise SystemExit(f"timed out waiting until {what}")


class Beats:
    """The bench's `celery beat` processes of the project copy, each with its own pid and log file."""

    def __init__(self, project, logs: Path, client):
        self.project, self.logs, self.client = project, logs, client
        self.run = project.root / "run"
        self.running: dict[int, subprocess.Popen] = {}
        self.numbers: dict[int, int] = {}  # pid -> n of beat-n.log
        self.started = 0
        self.run.mkdir(exist_ok=True)
        self.logs.mkdir(exist_ok=True)

    def start(self) -> subprocess.Popen:
        self.started += 1
        n = self.started
        with (self.logs / f"beat-{n}.err").open("w") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "app.tasks.celery_app", "beat", "--loglevel", "info",
                 "--pidfile", str(self.run / f"beat-{n}.pid"), "--logfile", str(self.logs / f"beat-{n}.log")],
                cwd=self.project.root, env=self.project.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=stderr)
        self.running[process.pid] = process
        self.numbers[process.pid] = n
        return process

    def holder_pid(self) -> int | None:
        holder = self.client.get("beat:leader")
        return pid_of(holder) if holder else None

    def heartbeat(self, pid: int) -> dict | None:
        for key in self.client.scan_iter(match="beat:heartbeat:*"):
            fields = {k.decode(): v.decode() for k, v in self.client.hgetall(key).items()}
            if fields.get("pid") == str(pid):
                return fields
        return None

    def tick_age(self, pid: int) -> float:
        """Seconds since beat `pid` last ran the lease script, on the Redis server's clock."""
        seconds, micros = self.client.time()
        return (seconds * 1000 + micros // 1000 - int(self.heartbeat(pid)["beat_ms"])) / 1000

    def wait_standby(self, process: subprocess.Popen) -> None:
        """Until the new beat has ticked once, as a standby."""
        wait_for(lambda: (beat := self.heartbeat(process.pid)) and beat["leading"] == "0", 60,
                 f"beat {process.pid} ticked as a standby", self)

    def check_alive(self) -> None:
        for pid, process in self.running.items():
            if process.poll() is not None:
                n = self.numbers[pid]
                output = "".join((self.logs / f"beat-{n}{suffix}").read_text(errors="replace")
                                 for suffix in (".log", ".err") if (self.logs / f"beat-{n}{suffix}").exists())
                raise SystemExit(f"beat {pid} exited with {process.returncode}:\n{output[-3000:]}")

    def stop_all(self) -> None:
        for process in self.running.values():
            process.send_signal(signal.SIGTERM)
        for process in self.running.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.running.clear()

    def log_problems(self) -> list[str]:
        lines = []
        for path in sorted(self.logs.glob("beat-*")):
            lines += [f"{path.name}: {line}" for line in path.read_text(errors="replace").splitlines()
                      if "ERROR" in line or "CRITICAL" in line or "Traceback" in line]
        return lines


def report_failover(times: list[float], timeout: float) -> None:
    print(f"leader failover, BEAT_LEADER_TIMEOUT={timeout:g} s, {len(times)} SIGKILLs of the lease holder:")
    print("  " + ", ".join(f"{t:.2f}" for t in times) + " s")
    print(f"  max {max(times):.2f} s, mean {statistics.fmean(times):.2f} s")
    print(f"  ratio max/BEAT_LEADER_TIMEOUT: {max(times) / timeout:.2f} (target <= {TARGET_FAILOVER})")


if __name__ == "__main__":
    main()
