"""Django settings of the peer suite: django-celery-beat's own `t.proj.settings`, plus what our
scheduler needs: our Django app, and our database set-up (app.core.django_settings).

Our scheduler writes through two connections, Django's and SQLAlchemy's (`app.core.database`, on
VAR_DIR/app.db), and each reads the other's writes. So Django's test database is that same file
(TEST NAME), not an in-memory one, and the plugin runs every peer test as a transactional Django test
(each write committed), so that neither connection waits on a transaction the other holds open.
"""

from t.proj.settings import *  # noqa: F403 - the peer suite's own settings, then our changes

from app.core.config import get_settings
from app.core.django_settings import django_database

INSTALLED_APPS = [*INSTALLED_APPS, "app.scheduling"]  # noqa: F405 - CodeDefinedJob, read by setup_schedule
_database = django_database(get_settings())  # the SQLite file under VAR_DIR, with our production options
DATABASES = {"default": {**_database, "TEST": {"NAME": _database["NAME"]}}}
