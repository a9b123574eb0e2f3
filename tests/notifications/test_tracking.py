"""Delivery and bounce events from the ESP (anymail's tracking signal) update the outbox row;
a bounce of a billing e-mail is reported to finance once."""

from __future__ import annotations

import pytest
from anymail.signals import AnymailTrackingEvent, tracking

from notifications import services
from notifications.models import Notification
from tests.notifications.conftest import OPS_EMAILS

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("clock")]
RECIPIENT = "billing@acme.example"


@pytest.fixture
def sent(customer, django_capture_on_commit_callbacks, mailoutbox):
    """A budget alert sent to acme, with the message id the ESP gave it."""
    with django_capture_on_commit_callbacks(execute=True):
        notification = services.queue_notification(
            key="budget-alert:test",
            kind=Notification.Kind.BUDGET_ALERT,
            recipients=[RECIPIENT],
            subject="80% of your budget used",
            context={"threshold": 80, "customer_name": "Acme Corp"},
            customer=customer,
        )
    assert len(mailoutbox) == 1
    Notification.objects.filter(pk=notification.pk).update(provider_message_id="esp-msg-1")
    notification.refresh_from_db()
    assert notification.status == "sent"
    return notification


def track(event_type: str, message_id: str = "esp-msg-1", recipient: str = RECIPIENT) -> None:
    event = AnymailTrackingEvent(event_type=event_type, message_id=message_id, recipient=recipient)
    tracking.send(sender=object, event=event, esp_name="test")


def test_bounce_marks_the_message_and_tells_finance_once(
    sent, django_capture_on_commit_callbacks, mailoutbox
):
    with django_capture_on_commit_callbacks(execute=True):
        track("bounced")
    with django_capture_on_commit_callbacks(execute=True):
        track("bounced")  # the ESP repeats itself

    sent.refresh_from_db()
    assert (sent.status, sent.last_error) == ("bounced", f"bounced: {RECIPIENT}")
    ops = [m for m in mailoutbox if m.to == OPS_EMAILS]
    assert len(ops) == 1 and len(mailoutbox) == 2
    assert ops[0].subject == f"Billing e-mail to {RECIPIENT} bounced"
    assert "budget-alert:test" in ops[0].body and "(customer acme)" in ops[0].body
    assert [mimetype for _, mimetype in ops[0].alternatives] == ["text/html"]
    notice = Notification.objects.get(kind="ops_bounce")
    assert (notice.status, notice.customer_id, notice.recipients) == (
        "sent",
        sent.customer_id,
        OPS_EMAILS,
    )
    # a late "delivered" for a bounced message does not undo the bounce
    track("delivered")
    sent.refresh_from_db()
    assert sent.status == "bounced"


def test_delivered_moves_sent_to_delivered(sent, django_capture_on_commit_callbacks, mailoutbox):
    with django_capture_on_commit_callbacks(execute=True):
        track("delivered")
        track("delivered")

    sent.refresh_from_db()
    assert (sent.status, sent.last_error) == ("delivered", "")
    assert len(mailoutbox) == 1
    assert not Notification.objects.filter(kind="ops_bounce").exists()


@pytest.mark.parametrize("message_id", ["unknown-id", ""])
def test_events_for_unknown_messages_change_nothing(
    sent, django_capture_on_commit_callbacks, mailoutbox, message_id
):
    with django_capture_on_commit_callbacks(execute=True):  # sent without a provider id
        services.queue_notification(
            key="ops-paused:test",
            kind=Notification.Kind.OPS_PAUSED,
            recipients=OPS_EMAILS,
            subject="Customer acme paused at its budget cap",
            context={},
        )
    before = list(Notification.objects.order_by("pk").values())
    assert [n["provider_message_id"] for n in before] == ["esp-msg-1", ""]

    with django_capture_on_commit_callbacks(execute=True):
        track("bounced", message_id=message_id)
        track("delivered", message_id=message_id)

    assert list(Notification.objects.order_by("pk").values()) == before
    assert len(mailoutbox) == 2


def test_bounce_of_a_finance_notice_is_not_reported_again(
    sent, django_capture_on_commit_callbacks, mailoutbox
):
    with django_capture_on_commit_callbacks(execute=True):
        track("bounced")
    notice = Notification.objects.get(kind="ops_bounce")
    Notification.objects.filter(pk=notice.pk).update(provider_message_id="esp-msg-2")

    with django_capture_on_commit_callbacks(execute=True):
        track("bounced", message_id="esp-msg-2", recipient=OPS_EMAILS[0])

    notice.refresh_from_db()
    assert notice.status == "bounced"
    assert Notification.objects.filter(kind="ops_bounce").count() == 1
    assert len(mailoutbox) == 2
