from django.core.validators import MinValueValidator
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


class SchedulePolicy(models.Model):
    """A job's scheduling policy (app/scheduling/job_policy.py) as beat follows it and the admin edits it.

    The sync writes the policy of each code-defined job from `beat_schedules.py`; a job made in
    the admin has none until one is saved, and is then scheduled as stock django-celery-beat does.
    """

    OVERLAP_CHOICES = [("allow", "allow: send every due run / 每次都发送"),
                       ("skip", "skip while the previous run is unfinished / 上次未完成则跳过")]
    MISSED_CHOICES = [("run_once", "run once after downtime / 停机后补发一次"),
                      ("skip", "skip runs later than the grace / 超过宽限期则跳过")]

    task = models.OneToOneField("django_celery_beat.PeriodicTask", on_delete=models.CASCADE,
                                related_name="schedule_policy")
    overlap = models.CharField(max_length=10, choices=OVERLAP_CHOICES, default="allow")
    missed = models.CharField(max_length=10, choices=MISSED_CHOICES, default="run_once")
    grace = models.FloatField(default=300, validators=[MinValueValidator(0)],
                              help_text="seconds a run may be late and still count as on time / 宽限秒数")
    jitter = models.FloatField(default=0, validators=[MinValueValidator(0)],
                               help_text="random delay of 0..N seconds per run / 随机延迟秒数")

    class Meta:
        verbose_name = "schedule policy / 调度策略"
        verbose_name_plural = "schedule policy / 调度策略"

    def __str__(self) -> str:
        return f"overlap={self.overlap} missed={self.missed} grace={self.grace:g}s jitter={self.jitter:g}s"
