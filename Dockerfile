# One image for every service of docker-compose.celery.yml: migrate, the workers, beat, Flower, the admin,
# the carrier simulator. Built once, by the `migrate` service (the others name the same image, unbuilt).
FROM python:3.11-slim-bookworm

# Chromium and a Chinese font for the screenshot worker; fontconfig is how the font is found.
# libatomic1: Playwright's bundled node driver links libatomic.so.1; without it no screenshot is taken.
# postgresql-client: pg_dump / psql for backup-database and backups restore.
# apt-get clean: a base image without Debian's docker-clean hook would keep ~300 MB of .deb files.
RUN apt-get update \
    && apt-get install -y --no-install-recommends chromium fonts-wqy-microhei fontconfig libatomic1 postgresql-client \
    && apt-get clean && rm -rf /var/lib/apt/lists/*

# Chromium and fontconfig write their caches under $HOME, so the user gets a real one.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app --shell /usr/sbin/nologin app

ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 VAR_DIR=/srv/app/var LOGS_DIR=/srv/app/logs
WORKDIR /srv/app

# Runtime dependencies only (requirements-test.txt stays out of the image).
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY app/ app/
COPY celery_beat_manager.py alembic.ini ./
# Compiled now: the source is read-only for the app user, and healthchecks start Python every few seconds.
RUN python -m compileall -q app celery_beat_manager.py

# The only writable paths; compose mounts named volumes here, which take this ownership.
RUN mkdir -p var logs && chown app:app var logs
USER app
