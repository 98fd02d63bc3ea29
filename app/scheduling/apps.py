from django.apps import AppConfig


class SchedulingConfig(AppConfig):
    name = "app.scheduling"
    label = "scheduling"
    default_auto_field = "django.db.models.BigAutoField"
