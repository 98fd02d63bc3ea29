"""The lifecycle of the service's processes, and the CLI over it (celery_beat_manager.py)."""
