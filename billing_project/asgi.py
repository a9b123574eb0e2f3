"""
ASGI config for billing_project project.

It exposes the ASGI callable as a module-level variable named ``application``.

For more information on this file, see
https://docs.djangoproject.com/en/5.2/howto/deployment/asgi/
"""

import os

from django.core.asgi import get_asgi_application

from billing_project.checks import refuse_to_start_without_collected_static

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "billing_project.settings")

application = get_asgi_application()
# In production, no start without the collected static files (a worker that fails to boot
# says why; one that started would answer 500 on every page).
refuse_to_start_without_collected_static()
