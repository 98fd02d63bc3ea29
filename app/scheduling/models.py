from django.db import models


class CodeDefinedJob(models.Model):
    """A periodic task that `beat_schedules.py` defines, with the fingerprint of its last synced entry."""

    name = models.CharField(max_length=200, unique=True)
    fingerprint = models.CharField(max_length=64)
    synced_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.name
