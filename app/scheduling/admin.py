"""The schedule admin: django-celery-beat's admin, with the task field limited to registered tasks.

Stock django-celery-beat also offers a free-text "Task (custom)" field; with its "run selected
tasks" action that lets an admin user send any task name at all. Here a periodic task can only
name a task this app registers.
"""

from celery import current_app
from django import forms
from django.contrib import admin
from django_celery_beat.admin import PeriodicTaskAdmin, PeriodicTaskForm, TaskSelectWidget
from django_celery_beat.models import PeriodicTask

from app.scheduling.job_policy import STOCK_POLICY
from app.scheduling.models import CodeDefinedJob, SchedulePolicy


def registered_tasks() -> list[str]:
    """The app's own task names (Celery's built-in `celery.*` tasks are not jobs)."""
    current_app.loader.import_default_modules()
    return sorted(name for name in current_app.tasks if not name.startswith("celery."))


class RegisteredTaskField(forms.ChoiceField):
    widget = TaskSelectWidget

    def valid_value(self, value) -> bool:
        return value in registered_tasks()


class RegisteredTaskForm(PeriodicTaskForm):
    regtask = None
    task = RegisteredTaskField(label="Task", error_messages={
        "invalid_choice": "%(value)s is not a registered task / 不是已注册的任务"})

    def clean(self):
        if "task" not in self.cleaned_data:  # the field's own error already says why
            return self.cleaned_data
        return super().clean()


class SchedulePolicyInline(admin.StackedInline):
    """A job's policy, edited beside it; a job without one is scheduled as stock django-celery-beat does."""

    model = SchedulePolicy
    max_num = 1
    verbose_name = "schedule policy / 调度策略 (none saved: every due run is sent, as stock does / 未保存则每次都发送)"


class ScheduleAdmin(PeriodicTaskAdmin):
    form = RegisteredTaskForm
    inlines = [SchedulePolicyInline]
    list_display = ("name", "enabled", "task", "scheduler", "queue", "last_run_at", "policy", "source")
    fieldsets = (
        (None, {"fields": ("name", "task", "enabled", "description"), "classes": ("extrapretty", "wide")}),
        *PeriodicTaskAdmin.fieldsets[1:],
    )

    @admin.display(description="policy / 策略")
    def policy(self, task: PeriodicTask) -> str:
        saved = SchedulePolicy.objects.filter(task=task).first()
        return f"{saved.overlap}/{saved.missed}" if saved else f"{STOCK_POLICY.overlap}/{STOCK_POLICY.missed} (stock)"

    @admin.display(description="source / 来源")
    def source(self, task: PeriodicTask) -> str:
        return "beat_schedules.py" if CodeDefinedJob.objects.filter(name=task.name).exists() else "admin"


admin.site.unregister(PeriodicTask)
admin.site.register(PeriodicTask, ScheduleAdmin)
admin.site.site_header = "定时任务管理 / Scheduled jobs"
admin.site.site_title = "定时任务管理"
admin.site.index_template = "scheduling/admin_index.html"  # links the schedule page (app/scheduling/views.py)
