"""The append-only audit log: the bottom layer every app writes its audit entries to.

It imports nothing of ours, so metering, invoicing, notifications and the admin of each can
record who did what through `audit.services.record_audit`.
"""
