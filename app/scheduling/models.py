from django.db import models


class CodeDefinedJob(models.Model):
    """A periodic task that `beat_schedules.py` defines, with the fingerprint of its last synced entry.

    `synced_state` is the row as the last sync wrote it, so the next change of the entry in the
    file can tell whether it overwrites an admin edit; `replaced_fields` names what it overwrote.
    """

    name = models.CharField(max_length=200, unique=True)
    fingerprint = models.CharField(max_length=64)
    synced_state = models.JSONField(default=dict)
    replaced_fields = models.JSONField(default=list)
    synced_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.name
