"""The bridge between `beat_schedules.py` and django-celery-beat's tables (a Django app)."""
