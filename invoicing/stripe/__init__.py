"""The Stripe integration, one module per role.

- `client`: the only module that imports the `stripe` library; one function per API call,
  errors sorted into transient and permanent, no call inside a database transaction.
- `outbox`: the one state machine of every Stripe write (intent, call, result; flagged after
  the resend window; retried by finance staff; resumed after a lost worker).
- `customers`: our customers' Stripe customers (created once, or linked by finance staff).
- `invoices`: each finalized invoice delivered as one Stripe invoice, later statuses pushed.
- `usage_reports`: usage reported to Stripe Billing Meters (at close, or realtime).
- `webhooks`: Stripe's events, stored once, applied through a table of handlers by type.
- `reconcile`: what Stripe holds, compared with our invoices and reports.

Dependencies point one way: client <- outbox <- customers <- invoices, usage_reports <-
webhooks, reconcile. The modules that queue Celery tasks import invoicing.tasks at module
level; the tasks import these modules inside their bodies.
"""
