"""What every sign-in form of the site (portal, admin, admin with a second factor) shares.

Django's `AuthenticationForm` sets the username field's `max_length` after the field was built,
so the length is only a widget attribute: a longer username was checked against the database
and recorded by django-axes, whose column holds 255 characters (a 500). Here every text field
refuses input longer than its `max_length` before anything else looks at it.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.validators import MaxLengthValidator


class BoundedTextFieldsMixin:
    """Adds the missing length check to each `CharField` whose `max_length` is set."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for field in self.fields.values():  # type: ignore[attr-defined]
            if not isinstance(field, forms.CharField) or field.max_length is None:
                continue
            if not any(isinstance(v, MaxLengthValidator) for v in field.validators):
                field.validators.append(MaxLengthValidator(field.max_length))
