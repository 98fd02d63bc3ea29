"""Django settings: Django hosts django-celery-beat's tables and the schedule admin, nothing else."""

import secrets
from datetime import timedelta

from sqlalchemy.engine import make_url

from app.core.config import TIMEZONE, Settings, get_settings
from app.core.network import libpq_options


def django_database(settings: Settings) -> dict:
    """The same database SQLAlchemy uses, in Django's terms: the same SQLite file (embedded or
    DATABASE_URL=sqlite:///path, one path for both), or the same PostgreSQL database."""
    if settings.sqlite_path is not None:
        settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(settings.sqlite_path),
            "OPTIONS": {
                # IMMEDIATE: no lock-upgrade deadlock between beat and workers writing at once.
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    url = make_url(settings.sqlalchemy_url)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": url.database,
        "USER": url.username or "",
        "PASSWORD": url.password or "",
        "HOST": url.host or "",
        "PORT": str(url.port or ""),
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": libpq_options(settings.network_timeout),
    }


def secret_key(settings: Settings) -> str:
    """A per-installation secret, generated once and kept 0600 under var/."""
    path = settings.var_path / "django_secret_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(50))
    return path.read_text().strip()


_settings = get_settings()

SECRET_KEY = secret_key(_settings)
DEBUG = False
ALLOWED_HOSTS = _settings.admin_hosts
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "app.scheduling",
    "axes",  # login throttling: its failed-attempt table lives in the same database
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last, as django-axes requires: turns a lock-out into a 429
]
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a locked-out address before any password check
    "django.contrib.auth.backends.ModelBackend",
]
# LOGIN_FAILURE_LIMIT failed logins from one address, each within LOGIN_LOCKOUT_SECONDS of the one
# before, lock that address out (429, right password or not) until LOGIN_LOCKOUT_SECONDS pass; any
# login attempt meanwhile starts the time again. The address is REMOTE_ADDR: behind a proxy, all share one.
# A success does not clear the count (axes' default): behind a shared address, it would clear a guesser's too.
AXES_FAILURE_LIMIT = _settings.login_failure_limit
AXES_COOLOFF_TIME = timedelta(seconds=_settings.login_lockout_seconds)
AXES_LOCKOUT_PARAMETERS = ["ip_address"]
AXES_DISABLE_ACCESS_LOG = True  # only failures are kept, and only until they expire: the table stays small
AUTH_PASSWORD_VALIDATORS = [{"NAME": f"django.contrib.auth.password_validation.{name}"} for name in (
    "UserAttributeSimilarityValidator", "MinimumLengthValidator", "CommonPasswordValidator",
    "NumericPasswordValidator")]
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
ROOT_URLCONF = "app.scheduling.urls"
STATIC_URL = "/static/"
WHITENOISE_USE_FINDERS = True  # the admin's own static files, served from the installed packages
DATABASES = {"default": django_database(_settings)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = TIMEZONE
LANGUAGE_CODE = "zh-hans"
DJANGO_CELERY_BEAT_TZ_AWARE = True
CELERY_BEAT_SCHEDULER = "app.scheduling.scheduler:ScheduleTableScheduler"  # the admin's scheduler check
SESSION_COOKIE_AGE = 8 * 3600
LOGGING_CONFIG = None
