"""Units of work: a task counted, minutes measured and quantities summed, recorded on exit.

All the events of one unit share one work id (generated at entry unless given) and one
timestamp (the entry time unless given); each event id is f"{work_id}:{meter}". Recording the
same unit again therefore sends the same events, which the service reports as duplicates:
a retry never charges twice.
"""

from __future__ import annotations

import threading
import time
import uuid
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from agent_billing import _validation

if TYPE_CHECKING:
    from agent_billing.client import Client

_current: ContextVar[UnitOfWork | None] = ContextVar("agent_billing_work", default=None)


def current_work() -> UnitOfWork | None:
    """The innermost unit of work running in this thread or task (e.g. inside @client.track)."""
    return _current.get()


class UnitOfWork:
    """Measure one unit of agent work; see Client.unit_of_work and Client.timer.

    On a normal exit it records: one event of `meter` (quantity 1: the task), one event per
    meter given to add() (the sum), and one event of `minutes_meter` (the elapsed minutes).
    When the block raises, nothing is recorded unless `record_on_error` is true, in which case
    the sums and minutes are recorded but the task is not counted. The exception propagates.
    """

    def __init__(
        self,
        client: Client,
        customer_id: str,
        meter: str | None = "agent_tasks",
        *,
        minutes_meter: str | None = None,
        work_id: str | None = None,
        properties: dict[str, Any] | None = None,
        timestamp: datetime | str | None = None,
        record_on_error: bool = False,
    ) -> None:
        self._client = client
        self.customer_id = _validation.customer_id(customer_id)
        self.meter = _validation.meter(meter) if meter is not None else None
        self.minutes_meter = _validation.meter(minutes_meter) if minutes_meter else None
        if self.meter is not None and self.meter == self.minutes_meter:
            raise ValueError("meter and minutes_meter must differ")
        if work_id is not None:  # every event id f"{work_id}:{meter}" must be valid
            for name in (self.meter, self.minutes_meter, "x"):
                if name is not None:
                    _validation.event_id(f"{work_id}:{name}", name="work_id")
        self.work_id: str | None = work_id
        self.properties = _validation.properties(properties)
        self._timestamp_arg = timestamp
        self.timestamp: str | None = None
        self.record_on_error = record_on_error
        self._totals: dict[str, Decimal] = {}
        self._lock = threading.Lock()
        self._start_ns: int | None = None
        self._token: Token[UnitOfWork | None] | None = None
        self.minutes: Decimal | None = None
        self.succeeded: bool | None = None  # None while running
        self.recorded: dict[str, tuple[str, Decimal]] = {}  # meter -> (event id, quantity)

    # --- measuring ---------------------------------------------------------------------

    def add(self, meter: str, quantity: int | Decimal | str) -> None:
        """Add `quantity` to the unit's total of `meter` (e.g. tokens); thread-safe."""
        meter = _validation.meter(meter)
        if meter in (self.meter, self.minutes_meter):
            raise ValueError(f"{meter!r} is measured by the unit itself; add() another meter")
        if self.work_id is not None:
            _validation.event_id(self.event_id(meter), name="work_id")
        amount = _validation.quantity(quantity)
        with self._lock:
            if self.succeeded is not None:
                raise RuntimeError("the unit of work has ended; add() inside the block")
            total = self._totals.get(meter, Decimal(0)) + amount
            _validation.quantity(total)  # the sum must stay a valid quantity too
            self._totals[meter] = total

    @property
    def totals(self) -> dict[str, Decimal]:
        with self._lock:
            return dict(self._totals)

    def event_id(self, meter: str) -> str:
        if self.work_id is None:
            raise RuntimeError("the unit of work has not started")
        return f"{self.work_id}:{meter}"

    # --- the context manager -----------------------------------------------------------

    def __enter__(self) -> UnitOfWork:
        if self._start_ns is not None:
            raise RuntimeError(
                "a UnitOfWork runs once; to retry the same unit create a new one with the "
                "same work_id and timestamp"
            )
        self.work_id = self.work_id or str(uuid.uuid4())
        self.timestamp = _validation.timestamp(self._timestamp_arg, now=datetime.now(UTC))
        self._start_ns = time.monotonic_ns()
        self._token = _current.set(self)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> None:
        end_ns = time.monotonic_ns()
        if self._token is not None:
            _current.reset(self._token)
            self._token = None
        assert self._start_ns is not None
        with self._lock:
            self.minutes = _validation.minutes_between(self._start_ns, end_ns)
            self.succeeded = exc_type is None
        if self.succeeded or self.record_on_error:
            self.record()

    async def __aenter__(self) -> UnitOfWork:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: object, tb: object
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    # --- recording ---------------------------------------------------------------------

    def record(self) -> dict[str, str]:
        """Spool the unit's events (all or none, in one transaction); returns meter -> id.

        Called on exit. Calling it again sends the very same events: the service answers
        `duplicate` for each, nothing is charged twice.
        """
        if self.succeeded is None:
            raise RuntimeError("record() is called when the unit of work has ended")
        quantities: list[tuple[str, Decimal]] = []
        if self.succeeded and self.meter is not None:
            quantities.append((self.meter, Decimal(1)))
        quantities.extend(sorted(self.totals.items()))
        if self.minutes_meter is not None and self.minutes is not None:
            quantities.append((self.minutes_meter, self.minutes))
        events = [
            self._client._build_event(
                customer_id=self.customer_id,
                meter=meter,
                quantity=quantity,
                properties=self.properties,
                event_id=self.event_id(meter),
                timestamp=self.timestamp,
            )
            for meter, quantity in quantities
        ]
        self._client._spool_events(events)
        self.recorded = {meter: (self.event_id(meter), quantity) for meter, quantity in quantities}
        return {meter: event_id for meter, (event_id, _) in self.recorded.items()}
