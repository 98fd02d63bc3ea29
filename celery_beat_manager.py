#!/usr/bin/env python3
"""Celery Beat 管理脚本: run, inspect and operate the scheduled-jobs service. See --help."""

import sys

from app.cli import main

if __name__ == "__main__":
    sys.exit(main())
