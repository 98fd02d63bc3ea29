#!/usr/bin/env python3
"""Celery Beat 管理脚本: start, stop and inspect the scheduled-jobs service. See --help."""

import sys

from app.manager.cli import main

if __name__ == "__main__":
    sys.exit(main())
