"""The CJK font receipts are drawn with, found as the app finds it; tests that need one skip where it is missing."""

from pathlib import Path

import pytest


def cjk_font_path() -> Path:
    """The app's CJK font; skips the test with the app's own install hint when the machine has none."""
    from app.core.config import get_settings
    from app.services.errors import MissingDependencyError
    from app.services.evidence.fonts import cjk_font_path as app_cjk_font_path

    try:
        return app_cjk_font_path(get_settings())
    except MissingDependencyError as error:
        pytest.skip(f"{error} (.ci/run installs it)")
