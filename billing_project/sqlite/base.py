"""Django's SQLite backend, with decimals stored and summed exactly.

SQLite's NUMERIC columns (where Django's DecimalField goes) keep 15 significant digits: a
quantity of 999999999999.999999 (DESIGN section 2 allows 10^12 with 6 places) came back as
1000000000000, and sums ran in floating point. Here a DecimalField is a text column holding
the fixed-point value Django writes (`format_number`), read back exactly, and the arithmetic
the apps do in SQL goes through the exact functions of `functions.py` (aggregates through
`billing_project.db.DecimalSum` / `DecimalMax`, which compile to them here).

Text compares as text: the apps compare decimals in SQL only against 0 in CHECK constraints
(`quantity >= 0`, which holds for the non-negative fixed-point text written here, and refuses
a leading minus sign); anything else is compared in Python or through those functions.
"""

from __future__ import annotations

from typing import Any

from django.db.backends.sqlite3 import base, operations
from django.db.models import DecimalField
from django.db.models.expressions import Col

from billing_project.sqlite import functions


class DatabaseOperations(operations.DatabaseOperations):
    def get_decimalfield_converter(self, expression: Any) -> Any:
        if isinstance(expression, Col):
            field = expression.output_field
            assert isinstance(field, DecimalField)
            step = functions.Decimal(1).scaleb(-field.decimal_places)

            def converter(value: Any, expression: Any, connection: Any) -> Any:
                number = functions.to_decimal(value)
                if number is None:
                    return None
                return number.quantize(step, context=functions.EXACT)

        else:

            def converter(value: Any, expression: Any, connection: Any) -> Any:
                return functions.to_decimal(value)

        return converter


class DatabaseWrapper(base.DatabaseWrapper):
    data_types = {**base.DatabaseWrapper.data_types, "DecimalField": "text"}
    ops_class = DatabaseOperations

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        conn = super().get_new_connection(conn_params)
        functions.register(conn)
        return conn
