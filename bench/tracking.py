"""Polling 10,000 in-transit deliveries: our job against a naive sequential loop, one run.

    python bench/tracking.py [--deliveries N] [--latency-ms 50] [--carrier-limit 200] [--naive-sample 300]

The simulated carrier (`python -m app simulator`, its own process, as in production the carrier
is not sharing a CPU with the bench) answers after --latency-ms and accepts --carrier-limit
requests/s, counted as they arrive; our workers are configured at 95 % of it. Prints the time our job takes (update-tracking-status
through a real prefork worker), the naive loop's rate (measured on a sample, then scaled to N),
the share of the carrier's limit we used (target >= 0.9), requests over the limit (target 0)
and the worker's peak memory. Runs on the embedded broker and SQLite in a scratch directory
unless CELERY_BROKER_URL / DATABASE_URL are set.
"""

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def peak_memory(pid: int, stop: threading.Event, peak: list[int]) -> None:
    while not stop.is_set():
        try:
            process = psutil.Process(pid)
            rss = sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])
            peak[0] = max(peak[0], rss)
        except psutil.Error:
            pass
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deliveries", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--carrier-limit", type=float, default=200.0)
    parser.add_argument("--naive-sample", type=int, default=300)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="bench-tracking-"))
    sys.path.insert(0, str(ROOT))
    from tests.support.project import free_port

    os.environ.update(VAR_DIR=str(scratch / "var"), LOGS_DIR=str(scratch / "logs"), TRACKING_PROVIDER="simulator",
                      SIMULATOR_PORT=str(free_port()), SIMULATOR_LATENCY_MS=str(args.latency_ms),
                      SIMULATOR_RATE_LIMIT=str(args.carrier_limit), KUAIDI100_RATE_LIMIT=str(args.carrier_limit * 0.95),
                      TRACKING_CHUNK_SIZE="100", TRACKING_CONCURRENCY="32", TRACKING_POLL_INTERVAL="30")
    from app.core.broker import EmbeddedBroker
    from app.core.config import get_settings

    settings = get_settings()
    broker = EmbeddedBroker(settings) if settings.uses_embedded_broker else None
    if broker:
        broker.start()
    simulator = start_simulator(settings)
    try:
        naive_rate = measure_naive(settings.carrier_url, args.naive_sample)
        ours = measure_ours(args.deliveries, settings.carrier_url.replace("/poll/query.do", "/stats"))
    finally:
        gc.collect()  # finished AsyncResults unsubscribe while the broker still answers
        simulator.terminate()
        simulator.wait(30)
        if broker:
            broker.stop()
    naive_total = args.deliveries / naive_rate
    print(f"deliveries: {args.deliveries}, carrier latency {args.latency_ms:.0f} ms, limit {args.carrier_limit:.0f}/s")
    print(f"naive sequential loop: {naive_rate:6.1f} polls/s -> {naive_total:7.1f} s for all (measured on {args.naive_sample})")
    print(f"our job:               {ours['rate']:6.1f} polls/s -> {ours['elapsed']:7.1f} s for all")
    print(f"speed-up: {naive_total / ours['elapsed']:.1f}x")
    print(f"share of the carrier's limit used: {ours['rate'] / args.carrier_limit:.3f} (target >= 0.9)")
    print(f"requests over the limit: {ours['over_limit']} (target 0); busiest second {ours['peak_second']}")
    print(f"worker peak memory (main + children): {ours['peak_memory'] / 2**20:.0f} MiB")


def start_simulator(settings) -> subprocess.Popen:
    import httpx

    process = subprocess.Popen([sys.executable, "-m", "app", "simulator"], cwd=ROOT, env=os.environ.copy(),
                               stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(settings.carrier_url.replace("/poll/query.do", "/stats"))
            return process
        except httpx.TransportError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit("the carrier simulator did not start")
            time.sleep(0.2)


def simulator_stats(stats_url: str) -> dict[str, int]:
    import httpx

    return httpx.get(stats_url).json()


def measure_naive(url: str, sample: int) -> float:
    from app.core.config import SIMULATOR_ACCOUNT
    from app.services.carriers.kuaidi100 import Kuaidi100Client

    client = Kuaidi100Client(*SIMULATOR_ACCOUNT, url)
    started = time.perf_counter()
    for i in range(sample):
        client.query("ems", f"NAIVE{i:06d}")
    client.close()
    return sample / (time.perf_counter() - started)


def seed(count: int) -> None:
    from sqlalchemy import insert

    from app.core.database import engine
    from app.core.migrations import upgrade_app_schema
    from app.models import Delivery
    from app.models.base import utcnow

    upgrade_app_schema(engine.sa_engine)
    now = utcnow()
    rows = [{"reference": f"B{i}", "recipient_name": "张三", "phone": "13800138000", "address": "北京市",
             "carrier": "ems", "tracking_number": f"EMBENCH{i:06d}", "status": "in_transit", "poll_count": 0,
             "poll_failures": 0, "created_at": now, "updated_at": now} for i in range(count)]
    with engine.sa_engine.begin() as connection:
        for start in range(0, count, 1000):
            connection.execute(insert(Delivery), rows[start:start + 1000])


def polled_count() -> int:
    from sqlalchemy import func, select

    from app.core.database import engine
    from app.models import Delivery

    with engine.sa_engine.connect() as connection:
        return connection.scalar(select(func.count()).select_from(Delivery).where(Delivery.last_polled_at.is_not(None)))


def measure_ours(count: int, stats_url: str) -> dict:
    seed(count)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "app.tasks.celery_app", "worker", "-Q", "tracking", "-c", "2",
         "--loglevel", "warning", "--hostname", "bench-tracking@%h"],
        cwd=ROOT, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop, peak = threading.Event(), [0]
    sampler = threading.Thread(target=peak_memory, args=(worker.pid, stop, peak), daemon=True)
    sampler.start()
    try:
        from app.tasks.celery_app import app

        deadline = time.monotonic() + 60
        while not app.control.ping(timeout=0.5):
            if time.monotonic() > deadline:
                raise SystemExit("the bench worker did not start")
        before = simulator_stats(stats_url)
        started = time.perf_counter()
        app.send_task("app.tasks.tracking_tasks.update_tracking_status", queue="tracking").get(timeout=120)
        last_report = 0.0
        while (done := polled_count()) < count:
            if time.monotonic() - last_report > 5:
                print(f"  {time.perf_counter() - started:5.1f}s polled {done}/{count}, carrier saw "
                      f"{simulator_stats(stats_url)['requests'] - before['requests']}", file=sys.stderr, flush=True)
                last_report = time.monotonic()
            time.sleep(0.2)
        elapsed = time.perf_counter() - started
    finally:
        stop.set()
        worker.terminate()
        worker.wait(60)
    after = simulator_stats(stats_url)
    return {"elapsed": elapsed, "rate": (after["requests"] - before["requests"]) / elapsed,
            "over_limit": after["over_limit"] - before["over_limit"], "peak_second": after["peak_per_second"],
            "peak_memory": peak[0]}


if __name__ == "__main__":
    main()
