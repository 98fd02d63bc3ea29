"""Evidence throughput: screenshots with the reused browser vs a browser launched per screenshot,
and PDF receipts, in one run.

    python bench/evidence.py [--shots 60] [--launch-shots 10] [--receipts 30] [--events 12]

Renders the real evidence page of a delivery with --events tracking events through the real
services (headless Chromium via Playwright, reportlab). Prints screenshots/s both ways and their
ratio (target: reuse >= 5x launch), receipts/s, and the peak memory of this process with its
Chromium and driver children.
"""

import argparse
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def sample_peak(stop: threading.Event, peak: list[int]) -> None:
    me = psutil.Process()
    while not stop.is_set():
        try:
            peak[0] = max(peak[0], sum(p.memory_info().rss for p in [me, *me.children(recursive=True)]))
        except psutil.Error:
            pass
        time.sleep(0.2)


def sample_delivery(events: int):
    from app.models import Delivery, TrackingEvent

    delivery = Delivery(id=1, reference="（2026）京0105民初123号", recipient_name="张三", phone="13800138000",
                        address="北京市朝阳区建国路1号", carrier="ems", tracking_number="EM123456789CN",
                        status="delivered", delivered_at=datetime(2026, 11, 3, tzinfo=timezone.utc))
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    rows = [TrackingEvent(occurred_at=start + timedelta(hours=6 * i), location="上海",
                          description=f"快件已到达【上海转运中心】第 {i} 站", fingerprint=str(i)) for i in range(events)]
    return delivery, rows


def rate(count: int, action) -> float:
    started = time.perf_counter()
    for _ in range(count):
        action()
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shots", type=int, default=60)
    parser.add_argument("--launch-shots", type=int, default=10)
    parser.add_argument("--receipts", type=int, default=30)
    parser.add_argument("--events", type=int, default=12)
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    import os

    os.environ.setdefault("VAR_DIR", tempfile.mkdtemp(prefix="bench-evidence-"))
    import app.tasks.celery_app  # noqa: F401  (sets Django up, as in a worker: the page template needs it)
    from app.core.config import get_settings
    from app.services.evidence.bounds import timeline_of
    from app.services.evidence.browser import BrowserSession
    from app.services.evidence.fonts import cjk_font_path
    from app.services.evidence.receipt import build_receipt_pdf
    from app.services.evidence.screenshot import render_png, render_tracking_page

    settings = get_settings()
    delivery, events = sample_delivery(args.events)
    events = timeline_of(events)
    html = render_tracking_page(delivery, events, datetime.now(timezone.utc))
    stop, peak = threading.Event(), [0]
    threading.Thread(target=sample_peak, args=(stop, peak), daemon=True).start()

    reused = BrowserSession(settings)
    render_png(reused, html)  # launch once, outside the timing
    shot = render_png(reused, html)
    reuse_rate = rate(args.shots, lambda: render_png(reused, html))
    reused.close()

    def launched_shot():
        browser = BrowserSession(settings)
        render_png(browser, html)
        browser.close()

    launch_rate = rate(args.launch_shots, launched_shot)
    font = cjk_font_path(settings)
    generated = datetime.now(timezone.utc)
    receipt_rate = rate(args.receipts, lambda: build_receipt_pdf(delivery, events, shot.png, "0" * 64, "HZ-BENCH",
                                                                 generated, font))
    pdf_size = len(build_receipt_pdf(delivery, events, shot.png, "0" * 64, "HZ-BENCH", generated, font))
    stop.set()
    print(f"evidence page: {args.events} events, {shot.width}x{shot.height} px, {len(shot.png) / 1024:.0f} KiB PNG")
    print(f"screenshots, reused browser:      {reuse_rate:6.1f}/s ({args.shots} shots)")
    print(f"screenshots, browser per shot:    {launch_rate:6.1f}/s ({args.launch_shots} shots)")
    print(f"reuse / launch: {reuse_rate / launch_rate:.1f}x (target >= 5)")
    print(f"receipts (PDF with the screenshot): {receipt_rate:6.1f}/s ({args.receipts} receipts)")
    print(f"receipt PDF size: {pdf_size / 1024:.1f} KiB")
    print(f"peak memory, this process + Chromium + driver: {peak[0] / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
