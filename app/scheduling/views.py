"""The admin's schedule page (every job, one job's runs, pause / resume / run now) and /metrics."""

import hmac
from datetime import timedelta

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST
from django_celery_beat.models import PeriodicTask
from kombu.exceptions import OperationalError
from prometheus_client import CONTENT_TYPE_LATEST

from app.core.config import get_settings
from app.core.database import SessionFactory
from app.scheduling.actions import UnknownJob, send_now, set_paused, stored_call
from app.scheduling.history import latest_runs, recent_runs
from app.scheduling.overview import SHANGHAI, job_rows, unsynced_jobs
from app.scheduling.table import ScheduleTableError, load_schedule_table

PAGE_SIZE = 100
RUNS_SHOWN = 50
UPCOMING = 5
STRIP = timedelta(hours=24)
STRIP_RUNS = 2000  # a job every minute runs 1440 times a day
VIEW_PERMISSION = "django_celery_beat.view_periodictask"
CHANGE_PERMISSION = "django_celery_beat.change_periodictask"
# Audit lines in the admin log (LogEntry), as the admin's history of the job shows them.
AUDIT = {"pause": "暂停 / paused from the schedule page", "resume": "恢复 / resumed from the schedule page",
         "run": "立即执行 / sent now from the schedule page as task {task_id}"}


# -- /metrics -----------------------------------------------------------------------------------


def _may_scrape(request) -> bool:
    """A logged-in staff user, or METRICS_TOKEN as a bearer token (when one is set)."""
    user = request.user
    if user.is_authenticated and user.is_active and user.is_staff:
        return True
    token = get_settings().metrics_token
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


@require_GET
def metrics(request):
    if not _may_scrape(request):
        response = HttpResponse("401 Unauthorized: log in to the admin, or send Authorization: Bearer METRICS_TOKEN\n",
                                status=401, content_type="text/plain; charset=utf-8")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    from app.scheduling.metrics import render

    return HttpResponse(render(), content_type=CONTENT_TYPE_LATEST)


# -- the schedule page --------------------------------------------------------------------------


def _require(request, permission: str) -> None:
    if not request.user.has_perm(permission):
        raise PermissionDenied


def _table() -> tuple[dict, str]:
    """beat_schedules.py's table, and why it is empty when it cannot be loaded."""
    try:
        return load_schedule_table(), ""
    except ScheduleTableError as error:
        return {}, str(error)


def _rows(table: dict, tasks, now):
    names = list(tasks.values_list("name", flat=True))
    return job_rows(table, now, tasks=tasks, runs=latest_runs(SessionFactory, names), upcoming=UPCOMING)


def _context(request, title: str, **extra) -> dict:
    return {**admin.site.each_context(request), "title": title, **extra}


def schedule_page(request):
    """Every job with its schedule in words, policy, next runs, last outcome and lateness; 100 a page."""
    _require(request, VIEW_PERMISSION)
    now = timezone.now()
    query = request.GET.get("q", "").strip()
    tasks = PeriodicTask.objects.order_by("name")
    if query:
        tasks = tasks.filter(name__icontains=query)
    page = Paginator(tasks, PAGE_SIZE).get_page(request.GET.get("page"))
    ids = [task.pk for task in page.object_list]
    table, table_error = _table()
    rows = _rows(table, PeriodicTask.objects.filter(pk__in=ids).order_by("name"), now)
    return TemplateResponse(request, "scheduling/schedule.html", _context(
        request, "调度总览 / Schedule", rows=rows, page=page, query=query, unsynced=unsynced_jobs(table),
        table_error=table_error, can_change=request.user.has_perm(CHANGE_PERMISSION), here=request.get_full_path()))


def _strip(runs, now) -> list[dict]:
    """Where each run of the last day sits on a 24-hour strip, in percent from its left end."""
    start = now - STRIP
    return [{"left": round((run.at - start) / STRIP * 100, 3), "run": run}
            for run in runs if run.at and run.at >= start]


def _hour_marks(now) -> list[dict]:
    """A mark every three hours (Asia/Shanghai) along the strip."""
    start = now - STRIP
    mark = start.astimezone(SHANGHAI).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    marks = []
    while mark <= now:
        if mark.hour % 3 == 0:
            marks.append({"left": round((mark - start) / STRIP * 100, 3), "label": f"{mark:%H:%M}"})
        mark += timedelta(hours=1)
    return marks


def job_page(request, pk: int):
    """One job: its schedule, its last 50 runs and a strip of its runs over the last 24 hours."""
    _require(request, VIEW_PERMISSION)
    task = get_object_or_404(PeriodicTask, pk=pk)
    now = timezone.now()
    table, table_error = _table()
    [row] = _rows(table, PeriodicTask.objects.filter(pk=pk), now)
    day = recent_runs(SessionFactory, task.name, last=STRIP_RUNS, since=now - STRIP)
    return TemplateResponse(request, "scheduling/job.html", _context(
        request, task.name, row=row, runs=recent_runs(SessionFactory, task.name, last=RUNS_SHOWN),
        strip=_strip(day, now), marks=_hour_marks(now), table_error=table_error,
        can_change=request.user.has_perm(CHANGE_PERMISSION), here=request.get_full_path(),
        change_url=reverse("admin:django_celery_beat_periodictask_change", args=[pk])))


@require_POST
def job_action(request, pk: int, action: str):
    """Pause, resume or run the job now; each recorded in the admin log. POST with the CSRF token only."""
    _require(request, CHANGE_PERMISSION)
    if action not in AUDIT:
        raise PermissionDenied
    task = get_object_or_404(PeriodicTask, pk=pk)
    try:
        if action == "run":
            from app.tasks.celery_app import app as celery_app

            result = send_now(celery_app, stored_call(task.name))
            audit = AUDIT["run"].format(task_id=result.id)
        else:
            change = set_paused(task.name, paused=action == "pause")
            audit = AUDIT[action] if change.changed else None
    except UnknownJob:
        messages.error(request, f"{task.name}: 已删除 / deleted meanwhile")
        return _back(request)
    except OperationalError as error:
        messages.error(request, f"{task.name}: 未发送，broker 不可达 / not sent, the broker does not answer: {error}")
        return _back(request)
    if audit:
        admin.site.get_model_admin(PeriodicTask).log_change(request, task, audit)
        messages.success(request, f"{task.name}: {audit}")
    else:
        state = "已暂停 / already paused" if action == "pause" else "已启用 / already enabled"
        messages.info(request, f"{task.name}: {state}")
    return _back(request)


def _back(request) -> HttpResponseRedirect:
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        target = reverse("schedule")
    return HttpResponseRedirect(target)
