"""The five queues of the seed, declared once."""

from enum import StrEnum


class Queue(StrEnum):
    HIGH_PRIORITY = "high_priority"  # critical: health check, pending-task checks
    TRACKING = "tracking"
    RECEIPT = "receipt"
    SCREENSHOT = "screenshot"
    LOW_PRIORITY = "low_priority"  # cleanup and backups
