"""The schedule admin's URLs: Django's admin at /admin/ with the schedule page, /metrics, and / sends to the admin."""

from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

from app.scheduling import views

urlpatterns = [
    path("metrics", views.metrics, name="metrics"),
    path("admin/schedule/", admin.site.admin_view(views.schedule_page), name="schedule"),
    path("admin/schedule/job/<int:pk>/", admin.site.admin_view(views.job_page), name="schedule-job"),
    path("admin/schedule/job/<int:pk>/<str:action>/", admin.site.admin_view(views.job_action),
         name="schedule-action"),
    path("admin/", admin.site.urls),
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
]
