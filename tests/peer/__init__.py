"""Running django-celery-beat's own scheduler tests against our scheduler (tests/test_peer_scheduler_suite.py).

Nothing here is collected by our suite: `plugin` and `settings` are loaded by the child pytest only.
"""
