"""Scheduled-jobs backend: Celery worker and beat for delivery tracking and housekeeping."""
