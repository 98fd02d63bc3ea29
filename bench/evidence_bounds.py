"""Evidence from oversized stored data: a delivery with 100,000 events (the newest 5 MB long) against ones
with 10 events and with as many events as evidence shows (100), through the real services, in one run.

    python bench/evidence_bounds.py [--events 100000] [--runs 5] [--postgres]

Stores the deliveries in a scratch SQLite database (or, with --postgres, a scratch database on
TEST_POSTGRES_ADMIN_URL's server, dropped after), then captures each one's screenshot (headless
Chromium via Playwright) and issues its PDF receipt (reportlab) --runs times. Prints the median time,
PNG size and height, PDF pages and bytes of each, and the ratios oversized / 10 events and oversized / 100 events (the bounds keep the second near
1: past the shown events, what is stored costs only the database's count and sort), with the peak
memory of this process and its Chromium (RSS summed over processes, shared pages counted repeatedly).
"""

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path


from evidence import sample_peak
from scratch_postgres import admin_connection, recreate_database

ROOT = Path(__file__).resolve().parents[1]
HUGE_TEXT_CHARS = 5 * 2**20
SCRATCH_DATABASE = "bench_evidence_bounds"


def add_delivery(factory, events: int, huge_text: bool) -> int:
    from app.models import Delivery, TrackingEvent

    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    with factory() as session:
        delivery = Delivery(reference="（2026）京0105民初123号", recipient_name="张三", phone="13800138000",
                            address="北京市朝阳区建国路1号", carrier="ems", tracking_number=f"EMBENCH{events}",
                            status="delivered", delivered_at=start + timedelta(minutes=events))
        session.add(delivery)
        session.flush()
        rows = [{"delivery_id": delivery.id, "occurred_at": start + timedelta(minutes=n), "location": "上海",
                 "description": f"快件已到达【上海转运中心】第 {n} 站", "fingerprint": f"f{n}"} for n in range(events)]
        if huge_text:
            rows[-1]["description"] = "签收" * (HUGE_TEXT_CHARS // 2)
        session.connection().execute(TrackingEvent.__table__.insert(), rows)
        session.commit()
        return delivery.id


def timed(runs: int, action) -> tuple[float, dict]:
    """The median seconds of `runs` calls of `action`, and its last result."""
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        result = action()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), result


def measure(factory, files_root: Path, browser, delivery_id: int, runs: int) -> dict:
    from app.services.evidence.receipt import generate_receipt
    from app.services.evidence.screenshot import capture_tracking_screenshot

    shot_s, shot = timed(runs, lambda: capture_tracking_screenshot(factory, files_root, browser, delivery_id,
                                                                   regenerate=True))
    receipt_s, receipt = timed(runs, lambda: generate_receipt(factory, files_root, delivery_id, regenerate=True))
    return {"shot_s": shot_s, "png_bytes": shot["size"], "png_height": shot["height"],
            "shown": shot["events_shown"], "total": shot["events_total"],
            "receipt_s": receipt_s, "pdf_bytes": receipt["size"], "pdf_pages": receipt["pages"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--postgres", action="store_true", help="a scratch PostgreSQL database, not SQLite")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    var_dir = Path(tempfile.mkdtemp(prefix="bench-evidence-bounds-"))
    os.environ.setdefault("VAR_DIR", str(var_dir))
    import app.tasks.celery_app  # noqa: F401  (sets Django up, as in a worker: the page template needs it)
    from sqlalchemy.orm import sessionmaker

    from app.core.config import get_settings
    from app.core.database import make_engine
    from app.core.migrations import upgrade_app_schema
    from app.services.evidence.bounds import DEFAULT_BOUNDS
    from app.services.evidence.browser import BrowserSession

    if args.postgres:
        admin, server = admin_connection()
        recreate_database(admin, SCRATCH_DATABASE)
        engine = make_engine(f"{server}/{SCRATCH_DATABASE}".replace("postgresql://", "postgresql+psycopg2://", 1))
    else:
        engine = make_engine(f"sqlite:///{var_dir / 'bench.db'}")
    upgrade_app_schema(engine)
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    started = time.perf_counter()
    shown = DEFAULT_BOUNDS.max_events
    deliveries = {"10 events": add_delivery(factory, 10, False), f"{shown} events": add_delivery(factory, shown, False),
                  f"{args.events} events": add_delivery(factory, args.events, True)}
    print(f"stored 10, {shown} and {args.events} events (the newest of these {HUGE_TEXT_CHARS} characters) "
          f"in {time.perf_counter() - started:.1f} s on {engine.dialect.name}")

    stop, peak = threading.Event(), [0]
    threading.Thread(target=sample_peak, args=(stop, peak), daemon=True).start()
    browser = BrowserSession(get_settings())
    try:
        measure(factory, var_dir / "files", browser, deliveries["10 events"], 1)  # launch, outside the timing
        results = {name: measure(factory, var_dir / "files", browser, delivery_id, args.runs)
                   for name, delivery_id in deliveries.items()}
    finally:
        browser.close()
        stop.set()
    print(f"{'':>16} {'screenshot':>11} {'PNG KiB':>8} {'PNG px high':>11} {'shown':>11} "
          f"{'receipt':>9} {'PDF KiB':>8} {'pages':>5}")
    for name, r in results.items():
        print(f"{name:>16} {r['shot_s'] * 1000:>8.0f} ms {r['png_bytes'] / 1024:>8.0f} {r['png_height']:>11} "
              f"{r['shown']:>5}/{r['total']:<5} {r['receipt_s'] * 1000:>6.0f} ms {r['pdf_bytes'] / 1024:>8.0f} "
              f"{r['pdf_pages']:>5}")
    *baselines, big = results.items()
    for name, base in baselines:
        print(f"{big[0]} / {name}: screenshot time {big[1]['shot_s'] / base['shot_s']:.1f}x, "
              f"PNG bytes {big[1]['png_bytes'] / base['png_bytes']:.1f}x, "
              f"receipt time {big[1]['receipt_s'] / base['receipt_s']:.1f}x, "
              f"PDF bytes {big[1]['pdf_bytes'] / base['pdf_bytes']:.1f}x")
    print(f"peak memory, this process + Chromium + driver: {peak[0] / 2**20:.0f} MiB")
    engine.dispose()
    if args.postgres:
        recreate_database(admin, SCRATCH_DATABASE, drop_only=True)


if __name__ == "__main__":
    main()
