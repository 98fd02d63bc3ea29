"""Fixtures of the service tests: a session factory on a fresh database, a files root, a browser."""

import pytest
from sqlalchemy.orm import sessionmaker

from app.core.migrations import upgrade_app_schema
from app.services.evidence.browser import BrowserSession
from tests.support.browser import chromium_path
from tests.support.fonts import cjk_font_path


@pytest.fixture
def factory(sa_engine):
    """Sessions on a fresh, migrated SQLite file and PostgreSQL database."""
    upgrade_app_schema(sa_engine)
    return sessionmaker(bind=sa_engine, expire_on_commit=False)


@pytest.fixture
def files_root(tmp_path):
    return tmp_path / "files"


@pytest.fixture(scope="module")
def browser(settings):
    """One headless Chromium for a test module; skips, naming the package, where Chromium is missing."""
    chromium_path()
    session = BrowserSession(settings)
    yield session
    session.close()


@pytest.fixture(scope="module")
def font_path():
    """The CJK font receipts are drawn with; skips, naming the package, where the machine has none."""
    return cjk_font_path()
