"""Budgets: a customer's cap per billing period, its thresholds and alerts, pause and resume
(and, next, prepaid credits and spend reservations, DESIGN section 6a). The one home of these
rules:

- models.py     BudgetCap, BudgetPeriodState, BudgetAlert (tables kept from metering);
                DEFAULT_THRESHOLDS, the one default
- rules.py      pure: what a valid budget is, thresholds crossed, the status, the cap that
                limits a period's bill
- selectors.py  reads only: the allowance (GET /allowance, GET /budget, the portal), the cap
                of each period (for the close), the alert history
- services.py   writes that validate, write, audit and notify in one call: the check after
                ingestion, the beat check, set_budget_cap, acknowledge_pause
- messages.py   what a check tells whom, queued in notifications' outbox
- views.py, serializers.py, urls.py, admin.py, tasks.py: the thin edges

Dependencies point one way, downwards: budgets imports notifications (the outbox), invoicing
(current period, rating, audit) and metering (customers); none of them imports budgets.
The two lower layers that need budgets call it through a hook it registers at start-up
(BudgetsConfig.ready): metering.hooks (the check after an ingested batch, whose statuses the
ingestion response carries) and invoicing.hooks (the cap of each closing period, for the
cap-credit line). portal, above, calls budgets' selectors and services.
Inside the package: rules <- models; selectors <- rules; messages <- selectors;
services <- selectors, rules, messages; the edges <- services, selectors.
"""
