# One image for every service of docker-compose.celery.yml: migrate, the workers, beat, Flower, the admin.
FROM python:3.11-slim-bookworm

# Chromium and a Chinese font for the screenshot worker; fontconfig is how the font is found.
RUN apt-get update \
    && apt-get install -y --no-install-recommends chromium fonts-wqy-microhei fontconfig postgresql-client \
    && rm -rf /var/lib/apt/lists/*

# Chromium and fontconfig write their caches under $HOME, so the user gets a real one.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app --shell /usr/sbin/nologin app

ENV PYTHONUNBUFFERED=1 VAR_DIR=/srv/app/var LOGS_DIR=/srv/app/logs
WORKDIR /srv/app

COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY app/ app/
COPY celery_beat_manager.py alembic.ini ./

# The only writable paths; compose mounts named volumes here, which take this ownership.
RUN mkdir -p var logs && chown app:app var logs
USER app
