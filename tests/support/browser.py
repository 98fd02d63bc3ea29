"""Headless Chromium driven by Playwright, as the machine's Debian package provides it."""

import os
import shutil

import psutil
import pytest

# Without the background-networking flags Chromium keeps dialling Google's hosts, which a closed
# network refuses; root needs --no-sandbox.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    """CHROMIUM_PATH, else `chromium` on PATH; skips the test naming the package when neither exists."""
    path = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("Chromium not installed (Debian package 'chromium'; .ci/run installs it)")
    return path


def launch(playwright):
    return playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)


def browser_processes(token: str) -> list[psutil.Process]:
    """The main Chromium process an app BrowserSession launched with `token`."""
    return [p for p in psutil.process_iter(["cmdline"])
            if f"--evidence-browser={token}" in (p.info["cmdline"] or [])]
