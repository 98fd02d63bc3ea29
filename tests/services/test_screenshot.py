"""Tracking screenshots with the machine's real Chromium (Playwright), on SQLite and PostgreSQL."""

import io
import os
import signal
import subprocess
import socket
import threading
import time
from datetime import datetime, timezone

import pytest
from PIL import Image
from sqlalchemy import func, select

from app.models import Delivery, DeliveryFile, TrackingEvent
from app.services.errors import MissingDependencyError
from app.services.evidence.browser import FLAGS, BrowserSession, reap_orphaned_browsers
from app.services.evidence.screenshot import (
    ScreenshotError,
    capture_tracking_screenshot,
    chinese_renders,
    render_png,
)
from app.services.filestore import sha256_of_file
from tests.support.browser import browser_processes, chromium_path


def delivered(factory) -> int:
    with factory() as session:
        delivery = Delivery(reference="（2026）京0105民初123号", recipient_name="张三", phone="13800138000",
                            address="北京市", carrier="ems", tracking_number="EM123456789CN", status="delivered")
        session.add(delivery)
        session.flush()
        for hour, (where, text) in enumerate([("北京", "【北京】已揽收"), ("上海", "快件已到达【上海转运中心】"),
                                             ("上海", "已签收，签收人：本人")]):
            session.add(TrackingEvent(delivery_id=delivery.id, occurred_at=datetime(2026, 11, 1, hour, tzinfo=timezone.utc),
                                      location=where, description=text, fingerprint=f"f{hour}"))
        session.commit()
        return delivery.id


def decoded(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def test_a_real_page_renders_to_a_png_of_the_page_size(browser):
    page = render_png(browser, "<html><body style='margin:0'><div style='width:900px;height:1400px'>x</div></body></html>")
    image = decoded(page.png)
    assert image.format == "PNG" and image.size == (900, 1400) == (page.width, page.height)


def test_two_chinese_characters_give_two_different_images(browser):
    assert chinese_renders(browser), "a CJK font is installed: 中 and 国 are not the same empty box"
    glyph = decoded(render_png(browser, "<div id='g' style='font-size:96px;width:120px'>中</div>", "#g").png)
    darkest, lightest = glyph.convert("L").getextrema()
    assert lightest - darkest > 100, "the glyph has strokes, not a blank"


def test_capture_stores_the_png_once_and_regenerates_on_request(browser, factory, settings, tmp_path):
    delivery_id = delivered(factory)
    first = capture_tracking_screenshot(factory, tmp_path, browser, delivery_id)
    stored = tmp_path / first["path"]
    assert sha256_of_file(stored) == first["sha256"] and stored.stat().st_size == first["size"]
    assert decoded(stored.read_bytes()).size == (first["width"], first["height"])
    again = capture_tracking_screenshot(factory, tmp_path, browser, delivery_id)
    assert again["existing"] and again["sha256"] == first["sha256"]
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(DeliveryFile)) == 1, "re-running stores nothing new"
    time.sleep(1.1)  # the capture time on the page, to the second, makes new bytes
    regenerated = capture_tracking_screenshot(factory, tmp_path, browser, delivery_id, regenerate=True)
    assert not regenerated["existing"] and regenerated["sha256"] != first["sha256"]
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(DeliveryFile)) == 2


@pytest.fixture
def silent_server():
    """A TCP server on 127.0.0.1 that accepts and never answers: a page that hangs."""
    listener = socket.create_server(("127.0.0.1", 0))
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                pass

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    for connection in held:
        connection.close()
    listener.close()


def test_a_hanging_page_is_abandoned_at_the_timeout_and_the_next_one_renders(browser, settings, silent_server):
    browser.close()  # Playwright's sync API runs one driver per thread at a time
    browser = BrowserSession(settings.model_copy(update={"screenshot_timeout": 2.0}))
    try:
        with pytest.raises(ScreenshotError, match="did not render within the timeout"):
            render_png(browser, f"<img src='{silent_server}/never.png'>")
        assert decoded(render_png(browser, "<p>next</p>").png).width == 900
    finally:
        browser.close()


def test_a_crashed_chromium_is_replaced_and_the_next_capture_succeeds(browser):
    render_png(browser, "<p>warm</p>")
    token = browser.token
    [main] = browser_processes(token)
    main.kill()
    main.wait(10)
    assert decoded(render_png(browser, "<p>after the crash</p>").png).width == 900
    assert browser.token != token, "a new browser was launched"


def test_without_chromium_the_task_says_what_to_install(settings):
    browser = BrowserSession(settings.model_copy(update={"chromium_path": "/nonexistent/chromium"}))
    with pytest.raises(MissingDependencyError, match="not an executable"):
        browser.page()
    missing = BrowserSession(settings.model_copy(update={"chromium_path": None}))
    import shutil as shutil_module

    if not any(shutil_module.which(n) for n in ("chromium", "chromium-browser", "google-chrome")):
        with pytest.raises(MissingDependencyError, match="apt-get install chromium"):
            missing.page()


def headless_chromium(flag: str) -> subprocess.Popen:
    """A bare Chromium in its own process group, marked as an app browser with `flag`."""
    return subprocess.Popen([chromium_path(), "--headless", *FLAGS, flag, "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def test_a_browser_whose_worker_died_is_reaped_and_a_live_ones_is_not():
    dead_owner = subprocess.Popen(["true"])
    dead_owner.wait()
    orphan = headless_chromium(f"--evidence-browser={dead_owner.pid}-test")
    owned = headless_chromium(f"--evidence-browser={os.getpid()}-test")
    try:
        time.sleep(1.5)
        reap_orphaned_browsers()  # another test process's worker start may reap it first: either kills it
        assert orphan.wait(10) == -signal.SIGKILL
        assert owned.poll() is None, "a browser whose worker is alive is left alone"
    finally:
        for browser in (orphan, owned):
            browser.kill()
            browser.wait(10)
