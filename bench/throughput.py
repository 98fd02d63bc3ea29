"""No-op task throughput: our app against bare Celery, same broker, same machine, one run.

    python bench/throughput.py [--tasks N] [--concurrency C] [--rounds R]

Runs on the embedded broker in a scratch directory (or CELERY_BROKER_URL when set), taking turns
between bare Celery, bare Celery with the seed's time limits, and our app for R rounds, and
prints the median tasks/s of each and the ratios (target: ours/bare at least 0.85).
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wait_ready(app, hostname: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if app.control.ping(destination=[hostname], timeout=0.5):
            return
    raise SystemExit(f"worker {hostname} did not answer a ping within {timeout:.0f}s")


def measure(app, name: str, queue: str, tasks: int, concurrency: int) -> float:
    """Start a worker for `app`, send `tasks` no-ops, wait for every result; tasks per second."""
    hostname = f"bench-{name}@%h".replace("%h", os.uname().nodename)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", f"bench.noop_apps:{name}", "worker", "-Q", queue,
         "-c", str(concurrency), "--loglevel", "warning", "--hostname", hostname],
        cwd=ROOT, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(app, hostname)
        task = app.tasks["bench.noop"]
        started = time.perf_counter()
        results = [task.apply_async((i,), queue=queue) for i in range(tasks)]
        for result in results:
            result.get(timeout=120)
        return tasks / (time.perf_counter() - started)
    finally:
        worker.terminate()
        worker.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    os.environ.setdefault("VAR_DIR", str(scratch / "var"))
    os.environ.setdefault("LOGS_DIR", str(scratch / "logs"))
    sys.path.insert(0, str(ROOT))
    from app.core.broker import EmbeddedBroker
    from app.core.config import get_settings

    settings = get_settings()
    broker = EmbeddedBroker(settings) if settings.uses_embedded_broker else None
    if broker:
        broker.start()
    try:
        from bench import noop_apps

        contenders = {"bare": "bench_bare", "bare_limits": "bench_bare_limits", "ours": "low_priority"}
        print(f"broker {settings.broker_url}, {args.tasks} tasks x {args.rounds} rounds, concurrency {args.concurrency}")
        rates = {name: [] for name in contenders}
        for round_number in range(1, args.rounds + 1):
            for name, queue in contenders.items():
                rates[name].append(measure(getattr(noop_apps, name), name, queue, args.tasks, args.concurrency))
            print(f"round {round_number}: " + ", ".join(f"{n} {r[-1]:.1f}/s" for n, r in rates.items()), flush=True)
    finally:
        if broker:
            broker.stop()
    median = {name: statistics.median(values) for name, values in rates.items()}
    print(f"bare Celery:                    {median['bare']:8.1f} tasks/s")
    print(f"bare Celery + seed time limits: {median['bare_limits']:8.1f} tasks/s")
    print(f"our app:                        {median['ours']:8.1f} tasks/s")
    print(f"ratio ours/bare: {median['ours'] / median['bare']:.3f} (target >= 0.85)")
    print(f"ratio ours/(bare + seed time limits): {median['ours'] / median['bare_limits']:.3f}")


if __name__ == "__main__":
    main()
