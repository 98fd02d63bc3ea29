"""Run Flower or gunicorn with their log in a WatchedFileHandler.

`cleanup-logs` rotates by renaming; a WatchedFileHandler notices the rename and reopens the
file, so nothing is written into the rotated file or lost. Celery's own --logfile already works
this way; Flower (tornado's RotatingFileHandler) and gunicorn (a plain FileHandler) do not.
Both also tell their libraries' chatter at debug level only (app.core.logging.quiet_library_chatter).

    python -m app.manager.watched_logs LOGFILE celery -A app.manager.flower_login flower ...
    python -m app.manager.watched_logs LOGFILE gunicorn app.core.wsgi:application ...
"""

import logging
import sys
from logging.handlers import WatchedFileHandler

from app.core.logging import quiet_library_chatter

LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s"


def watched_handler(logfile: str) -> WatchedFileHandler:
    handler = WatchedFileHandler(logfile, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    return handler


def gunicorn_log_config(logfile: str, level: str = "INFO") -> dict:
    """gunicorn's logconfig_dict: error and access lines into one watched file, at `level` (its --log-level)."""
    handler = {"class": "logging.handlers.WatchedFileHandler", "filename": logfile, "encoding": "utf-8",
               "formatter": "plain"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": LOG_FORMAT}},
        "handlers": {"file": handler},
        "root": {"level": level, "handlers": ["file"]},  # replaces gunicorn's default console root
        "loggers": {name: {"handlers": ["file"], "level": level, "propagate": False}
                    for name in ("gunicorn.error", "gunicorn.access")},
    }


def run_flower(logfile: str, celery_args: list[str]) -> int:
    """Tornado adds its own stderr handler only when the root logger has none: give it ours."""
    from celery.bin.celery import main as celery_main

    logging.getLogger().addHandler(watched_handler(logfile))
    quiet_library_chatter()
    sys.argv = ["celery", *celery_args]
    return celery_main()


def run_gunicorn(logfile: str, gunicorn_args: list[str]) -> int:
    from gunicorn.app.wsgiapp import WSGIApplication

    class Application(WSGIApplication):
        def load_config(self):
            super().load_config()
            self.cfg.set("logconfig_dict", gunicorn_log_config(logfile, self.cfg.loglevel.upper()))

    quiet_library_chatter()  # in the master, before it logs and forks the workers that load the app
    sys.argv = ["gunicorn", *gunicorn_args]
    Application("%(prog)s [OPTIONS] [APP_MODULE]").run()
    return 0


def main(argv: list[str]) -> int:
    logfile, program, *args = argv
    return run_flower(logfile, args) if program == "celery" else run_gunicorn(logfile, args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
