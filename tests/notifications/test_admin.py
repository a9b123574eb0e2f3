"""Finance staff in the admin: resend a summary."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, User

from audit.models import AuditEntry
from invoicing.services import closing
from notifications.models import Notification
from notifications.services import queue_usage_summaries
from tests.invoicing.conftest import T0

pytestmark = pytest.mark.django_db


@pytest.fixture
def finance_client(client):
    user = User.objects.create_user("fin", password="pw-finance-1", is_staff=True)
    user.groups.add(Group.objects.get(name="Finance"))
    client.force_login(user)
    return client


def test_resend_a_summary(
    finance_client, subscribed, settings, django_capture_on_commit_callbacks, mailoutbox
):
    settings.BILLING_GRACE_PERIOD = 0
    closing.close_due_periods(now=T0 + timedelta(hours=1))
    with django_capture_on_commit_callbacks(execute=True):
        queue_usage_summaries()
    sent = Notification.objects.get()
    assert len(mailoutbox) == 1
    with django_capture_on_commit_callbacks(execute=True):
        response = finance_client.post(
            "/admin/notifications/notification/",
            {"action": "resend", "_selected_action": [sent.pk]},
        )
    assert response.status_code == 302
    assert len(mailoutbox) == 2
    assert Notification.objects.filter(key=f"{sent.key}:resend:1", status="sent").exists()
    assert AuditEntry.objects.filter(action="admin.notification_resent", actor="fin").count() == 1
    assert (
        finance_client.get("/admin/notifications/notification/?status__exact=bounced").status_code
        == 200
    )
