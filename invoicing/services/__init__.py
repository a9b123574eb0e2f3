"""Writes of the invoicing app, one module per capability (plans, periods, closing, invoices)."""
