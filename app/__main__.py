"""python -m app: the same commands as celery_beat_manager.py (an alias kept for scripts)."""

import sys

from app.cli import main

if __name__ == "__main__":
    sys.exit(main(prog_name="python -m app"))
