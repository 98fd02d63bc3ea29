"""One headless Chromium per worker process, driven by Playwright and reused across tasks.

Launching Chromium costs about a second; a reused browser with a reused page renders many
pages a second. The browser is relaunched when it has crashed, a page that hangs is abandoned
at SCREENSHOT_TIMEOUT, and the Playwright driver kills Chromium when its owner process dies
(a worker child killed at the hard time limit leaves no browser behind).
"""

import logging
import os
import secrets
import shutil
import signal

import psutil

from app.core.config import Settings
from app.services.errors import MissingDependencyError

log = logging.getLogger(__name__)

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
# Headless on a server: no sandbox as root, and no background calls to Google's services,
# which a closed network refuses many at a time.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--font-render-hinting=none"]
VIEWPORT = {"width": 900, "height": 600}


def chromium_executable(settings: Settings) -> str:
    """CHROMIUM_PATH, else the first Chromium on PATH; MissingDependencyError saying what to install."""
    if settings.chromium_path:
        if not os.access(settings.chromium_path, os.X_OK):
            raise MissingDependencyError(f"CHROMIUM_PATH={settings.chromium_path} is not an executable file")
        return settings.chromium_path
    for name in CANDIDATES:
        if found := shutil.which(name):
            return found
    raise MissingDependencyError("no Chromium: install the Debian package 'chromium' (apt-get install chromium) "
                                 "or set CHROMIUM_PATH")


class BrowserSession:
    """The process's browser: started on first use, restarted after a crash, closed at exit."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._playwright = None
        self._browser = None
        self._page = None
        self.token: str | None = None  # "<owner pid>-<random>" in the browser's command line
        self.chinese_checked = False  # set once Chinese is seen to render (fonts do not change under us)

    def page(self):
        """The reused page, relaunching the browser first when it is gone."""
        if self._browser is None or not self._browser.is_connected():
            self._launch()
        if self._page is None or self._page.is_closed():
            self._page = self._browser.new_page(viewport=VIEWPORT)
            self._page.set_default_timeout(self.settings.screenshot_timeout * 1000)
        return self._page

    def new_page(self):
        """A page of its own (for pages from elsewhere, whose state must not carry over)."""
        self.page()
        page = self._browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(self.settings.screenshot_timeout * 1000)
        return page

    def _launch(self) -> None:
        from playwright.sync_api import sync_playwright

        executable = chromium_executable(self.settings)
        self.close()
        reap_orphaned_browsers()
        self.token = f"{os.getpid()}-{secrets.token_hex(6)}"
        self._playwright = sync_playwright().start()
        self._browser = self._playwright.chromium.launch(
            executable_path=executable, headless=True, args=[*FLAGS, f"--evidence-browser={self.token}"])
        log.info("Chromium started (%s, pid of driver parent %d)", executable, os.getpid())

    def abandon_page(self) -> None:
        """Drop the reused page (it hung or its state is unknown); the next task gets a fresh one."""
        page, self._page = self._page, None
        if page is not None:
            try:
                page.close()
            except Exception:  # noqa: BLE001 - the page may be as dead as its browser
                log.warning("could not close an abandoned page; restarting the browser")
                self.close()

    def close(self) -> None:
        """Close the browser and the driver (which kills any Chromium process left)."""
        browser, playwright = self._browser, self._playwright
        self._browser = self._playwright = self._page = None
        for closing in (browser.close if browser else None, playwright.stop if playwright else None):
            if closing is None:
                continue
            try:
                closing()
            except Exception as error:  # noqa: BLE001 - a crashed browser cannot be closed politely
                log.warning("closing Chromium: %s", error)


BROWSER_FLAG = "--evidence-browser="
PLAYWRIGHT_PROFILE = "playwright_chromiumdev_profile"


def _orphaned_group(leader_pid: int) -> bool:
    """True when the process group led by `leader_pid` is a browser nobody owns any more."""
    try:
        leader = psutil.Process(leader_pid)
        flag = next((arg for arg in leader.cmdline() if arg.startswith(BROWSER_FLAG)), None)
    except psutil.NoSuchProcess:
        return True  # the browser's main process is gone and left its helpers behind
    except psutil.Error:
        return False
    if flag is None:
        return False
    return not psutil.pid_exists(int(flag.removeprefix(BROWSER_FLAG).split("-")[0]))


def reap_orphaned_browsers() -> int:
    """Kill Chromium process groups whose owning worker process died without closing them
    (a child killed at the hard time limit); the number of groups killed."""
    groups = set()
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if any(arg.startswith(BROWSER_FLAG) or PLAYWRIGHT_PROFILE in arg for arg in cmdline):
            try:
                groups.add(os.getpgid(process.pid))
            except OSError:
                continue
    reaped = 0
    for group in groups:
        if _orphaned_group(group):
            try:
                os.killpg(group, signal.SIGKILL)
                reaped += 1
            except OSError:
                continue
    if reaped:
        log.warning("killed %d Chromium process group(s) left by dead worker processes", reaped)
    return reaped
