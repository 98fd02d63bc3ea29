"""Celery tasks: thin wrappers over app.services, one module per family."""
