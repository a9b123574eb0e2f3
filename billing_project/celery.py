"""The Celery app: configured from Django settings (CELERY_*), tasks found in each app."""

import logging
import os

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger

from billing_project.log_redaction import RedactSecretsFilter

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "billing_project.settings")

app = Celery("billing_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@after_setup_logger.connect
@after_setup_task_logger.connect
def redact_worker_logs(logger: logging.Logger, **kwargs: object) -> None:
    """A worker replaces the root handlers that settings.LOGGING installed with its own: give
    those (and the task logger's) the same filter, so keys stay out of worker logs too."""
    for handler in logger.handlers:
        if not any(isinstance(f, RedactSecretsFilter) for f in handler.filters):
            handler.addFilter(RedactSecretsFilter())
