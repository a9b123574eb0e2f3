"""The client: record usage durably, deliver it in the background, check budgets."""

from __future__ import annotations

import atexit
import functools
import hashlib
import inspect
import json
import logging
import os
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from agent_billing import _validation
from agent_billing._http import Http, Response, TransportError
from agent_billing._spool import Spool, SpooledEvent
from agent_billing.errors import (
    ApiError,
    AuthenticationError,
    BudgetExceeded,
    ClientClosed,
    ServiceUnavailable,
)
from agent_billing.work import UnitOfWork

try:  # advisory locks between processes sharing a spool (POSIX); elsewhere one process per spool
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("agent_billing")

EVENTS_PATH = "/api/v1/events"
MAX_BATCH = 1000  # the service's limit per request
MAX_BATCH_BYTES = 1_000_000  # under the service's 1 MiB body limit
MAX_RETRY_AFTER = 600.0  # a Retry-After beyond this is taken as 10 minutes
F = TypeVar("F", bound=Callable[..., Any])

_DONE = "done"  # the batch was answered (settled, dead-lettered or split): go on
_RETRY = "retry"  # nothing changed: try again after a delay
_HALT = "halt"  # the key was refused: stop delivering


def default_spool_path(base_url: str, api_key: str) -> Path:
    """A per-user cache file, one per (service URL, API key)."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(f"{base_url.rstrip('/')}\n{api_key}".encode()).hexdigest()[:16]
    return base / "agent-billing" / f"spool-{digest}.sqlite3"


class _DeliveryLock:
    """An advisory file lock so one process at a time delivers a shared spool. The kernel
    drops it when the holder dies, even on SIGKILL."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        if fcntl is None:
            return True
        if self._fd is None:
            self._fd = os.open(self._path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        if fcntl is not None and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass
class _Cached:
    at: float  # time.monotonic()
    data: dict[str, Any]
    complete: bool  # from the allowance endpoint (else only status and remaining_minor)


class Client:
    """Records usage events for the metered-billing service.

    record() validates an event, gives it an id (once) and commits it to a local SQLite spool
    before returning; a daemon thread sends spooled events in batches and removes them only
    when the service has answered for them. See the README for the guarantees.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        spool_path: str | os.PathLike[str] | None = None,
        batch_size: int = 500,
        flush_interval: float = 2.0,
        max_retries: int = 8,
        backoff_base: float = 0.5,
        max_backoff: float = 30.0,
        timeout: float = 10.0,
        allowance_ttl: float = 5.0,
        allowance_fail_open: bool = True,
        close_timeout: float = 10.0,
    ) -> None:
        if not isinstance(api_key, str) or not api_key.strip():
            raise ValueError("api_key is required")
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1 to {MAX_BATCH}")
        if flush_interval <= 0 or timeout <= 0 or backoff_base <= 0 or max_backoff <= 0:
            raise ValueError("flush_interval, timeout and the backoff must be positive")
        if max_retries < 0 or allowance_ttl < 0:
            raise ValueError("max_retries and allowance_ttl must not be negative")
        self.base_url = base_url.rstrip("/")
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.max_backoff = max_backoff
        self.allowance_ttl = allowance_ttl
        self.allowance_fail_open = allowance_fail_open
        self.close_timeout = close_timeout
        self._http = Http(self.base_url, api_key.strip(), timeout=timeout)
        self.spool_path = Path(spool_path or default_spool_path(self.base_url, api_key))

        self._cache: dict[str, _Cached] = {}
        self._cache_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._stats: dict[str, int] = dict.fromkeys(
            (
                "recorded",
                "local_duplicates",
                "local_conflicts",
                "batches",
                "accepted",
                "duplicates",
                "conflicts",
                "dead_lettered",
                "retries",
            ),
            0,
        )
        self.last_error: str | None = None
        self._closed = False
        self._final_pending: int | None = None
        self._start()
        atexit.register(self._close_at_exit)

    def _start(self) -> None:
        """Open the spool and start the sender (again in a forked child)."""
        self._pid = os.getpid()
        self._spool = Spool(self.spool_path)
        self._delivery_lock = _DeliveryLock(
            self.spool_path.with_name(self.spool_path.name + ".lock")
        )
        self._cond = threading.Condition()
        self._kick = True  # send what an earlier run left in the spool, right away
        self._urgent = False
        self._stopping = False
        self._halted = False
        self._unsent = 0
        self._batch_limit = self.batch_size
        self._thread = threading.Thread(target=self._run, name="agent-billing-sender", daemon=True)
        self._thread.start()

    def _check_process(self) -> None:
        if self._closed:
            raise ClientClosed("this Client is closed")
        if os.getpid() != self._pid:  # forked: SQLite handles and threads do not survive fork
            self._abandoned = self._spool  # never used (nor closed) in the child
            self._delivery_lock.close()  # the parent's lock, if held, stays the parent's
            self._cache_lock = threading.Lock()  # another thread may have held them at fork
            self._stats_lock = threading.Lock()
            self._start()

    def __repr__(self) -> str:
        return f"<agent_billing.Client {self.base_url} spool={str(self.spool_path)!r}>"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- recording ---------------------------------------------------------------------

    def record(
        self,
        customer_id: str,
        meter: str,
        quantity: int | Decimal | str = 1,
        properties: dict[str, Any] | None = None,
        event_id: str | None = None,
        timestamp: datetime | str | None = None,
    ) -> str:
        """Spool one usage event durably and return its event id.

        Without `event_id` a new one (a UUID) is made here, once, and stored with the event,
        so every resend carries the same id. Raises InvalidEvent/TypeError for an event the
        service would refuse; floats are refused as quantities (use int, Decimal or str).
        """
        event = self._build_event(
            customer_id=customer_id,
            meter=meter,
            quantity=quantity,
            properties=properties,
            event_id=event_id,
            timestamp=timestamp,
        )
        self._spool_events([event])
        return event["event_id"]

    def unit_of_work(
        self,
        customer_id: str,
        meter: str | None = "agent_tasks",
        *,
        minutes_meter: str | None = None,
        work_id: str | None = None,
        properties: dict[str, Any] | None = None,
        timestamp: datetime | str | None = None,
        record_on_error: bool = False,
    ) -> UnitOfWork:
        """A context manager measuring one unit of work (see UnitOfWork)::

        with client.unit_of_work("acme", minutes_meter="agent_minutes") as work:
            work.add("llm_tokens", response.usage.total_tokens)
        """
        return UnitOfWork(
            self,
            customer_id,
            meter,
            minutes_meter=minutes_meter,
            work_id=work_id,
            properties=properties,
            timestamp=timestamp,
            record_on_error=record_on_error,
        )

    def timer(
        self,
        customer_id: str,
        meter: str = "agent_minutes",
        *,
        work_id: str | None = None,
        properties: dict[str, Any] | None = None,
        timestamp: datetime | str | None = None,
        record_on_error: bool = False,
    ) -> UnitOfWork:
        """A context manager recording the elapsed minutes (6 decimal places) of its block."""
        return UnitOfWork(
            self,
            customer_id,
            None,
            minutes_meter=meter,
            work_id=work_id,
            properties=properties,
            timestamp=timestamp,
            record_on_error=record_on_error,
        )

    def track(
        self,
        customer_id: str | Callable[..., str],
        meter: str | None = "agent_tasks",
        *,
        minutes_meter: str | None = None,
        properties: dict[str, Any] | None = None,
        record_on_error: bool = False,
    ) -> Callable[[F], F]:
        """Decorate a function (sync or async) so each call is one unit of work.

        `customer_id` is a string, or a callable given the function's arguments that returns
        it. Inside the call, `agent_billing.current_work().add(meter, n)` adds to its sums.
        """

        def unit(args: tuple[Any, ...], kwargs: dict[str, Any]) -> UnitOfWork:
            customer = customer_id(*args, **kwargs) if callable(customer_id) else customer_id
            return self.unit_of_work(
                customer,
                meter,
                minutes_meter=minutes_meter,
                properties=properties,
                record_on_error=record_on_error,
            )

        def decorate(func: F) -> F:
            if inspect.iscoroutinefunction(func):

                @functools.wraps(func)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    async with unit(args, kwargs):
                        return await func(*args, **kwargs)

                return async_wrapper  # type: ignore[return-value]

            @functools.wraps(func)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                with unit(args, kwargs):
                    return func(*args, **kwargs)

            return wrapper  # type: ignore[return-value]

        return decorate

    def _build_event(
        self,
        *,
        customer_id: str,
        meter: str,
        quantity: int | Decimal | str,
        properties: dict[str, Any] | None,
        event_id: str | None,
        timestamp: datetime | str | None,
    ) -> dict[str, Any]:
        event: dict[str, Any] = {
            "event_id": (
                _validation.event_id(event_id) if event_id is not None else str(uuid.uuid4())
            ),
            "customer_id": _validation.customer_id(customer_id),
            "meter": _validation.meter(meter),
            "quantity": _validation.quantity_text(_validation.quantity(quantity)),
            "timestamp": _validation.timestamp(timestamp, now=datetime.now(UTC)),
        }
        props = _validation.properties(properties)
        if props:
            event["properties"] = props
        return event

    def _spool_events(self, events: list[dict[str, Any]]) -> None:
        """Commit events to the spool (one transaction), then nudge the sender by count."""
        self._check_process()
        rows = [
            (
                event["customer_id"],
                event["event_id"],
                json.dumps(event, separators=(",", ":"), ensure_ascii=False),
            )
            for event in events
        ]
        outcomes = self._spool.add(rows)
        kinds = [kind for kind, _ in outcomes]
        spooled = kinds.count("spooled")
        for (customer, event_id, body), (kind, waiting) in zip(rows, outcomes, strict=True):
            if kind == "conflict":
                hint = ""
                if waiting is not None and _without_timestamp(waiting) == _without_timestamp(body):
                    hint = (
                        " (only the timestamp differs: pass the same timestamp= when re-recording)"
                    )
                logger.warning(
                    "agent_billing: event %r of customer %r is already waiting with another "
                    "payload; the first one is kept (one event id must mean one event)%s",
                    event_id,
                    customer,
                    hint,
                )
        self._count(
            recorded=spooled,
            local_duplicates=kinds.count("duplicate"),
            local_conflicts=kinds.count("conflict"),
        )
        with self._cond:
            self._unsent += spooled
            if self._unsent >= self.batch_size:
                self._unsent = 0
                self._kick = True
                self._cond.notify_all()

    # --- delivery ----------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every event spooled so far is delivered (True), or `timeout` seconds
        passed or delivery is stopped by a refused key (False). Dead letters do not count."""
        self._check_process()
        target = self._spool.last_seq()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._urgent = True
            self._cond.notify_all()
        while True:
            if self._spool.pending(upto=target) == 0:
                return True
            if self._halted:
                return False
            wait = 0.1
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                wait = min(wait, remaining)
            with self._cond:
                self._cond.wait(wait)

    def close(self, timeout: float | None = None) -> None:
        """Flush (up to `timeout`, default close_timeout) and stop the sender. Undelivered
        events stay in the spool; the next Client opening it sends them."""
        if self._closed:
            return
        if os.getpid() != self._pid:
            self._closed = True
            return
        delivered = self.flush(self.close_timeout if timeout is None else timeout)
        self._closed = True
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(self._http.timeout + 1.0)
        if not delivered:
            logger.warning(
                "agent_billing: %d event(s) stay in the spool %s; the next client opening it "
                "will send them",
                self._spool.pending(),
                self.spool_path,
            )
        self._final_pending = self._spool.pending()
        if not self._thread.is_alive():
            self._delivery_lock.close()
            self._spool.close()
        atexit.unregister(self._close_at_exit)

    def _close_at_exit(self) -> None:
        try:
            self.close()
        except Exception:  # never let a billing client break interpreter shutdown
            logger.exception("agent_billing: closing the client at exit failed")

    def _run(self) -> None:
        while True:
            with self._cond:
                if not (self._kick or self._urgent or self._stopping):
                    self._cond.wait(self.flush_interval)
                self._kick = self._urgent = False
                self._unsent = 0
                if self._stopping:
                    return
            if self._halted:
                continue
            try:
                self._drain()
            except Exception:
                logger.exception("agent_billing: unexpected error in the delivery thread")
                self._sleep(1.0, interruptible=False)

    def _sleep(self, seconds: float, *, interruptible: bool) -> None:
        """Wait, waking early on close() (and on flush() when interruptible)."""
        deadline = time.monotonic() + seconds
        with self._cond:
            while not self._stopping and not (interruptible and self._urgent):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if interruptible:
                self._urgent = False

    def _drain(self) -> None:
        """Send every waiting event, batch by batch, retrying until done or stopped."""
        if not self._delivery_lock.acquire():
            return  # another process is delivering this spool (our events included)
        try:
            failures, failing = 0, False
            while not self._stopping and not self._halted:
                batch = self._spool.next_batch(limit=self._batch_limit, max_bytes=MAX_BATCH_BYTES)
                if not batch:
                    return
                outcome, delay = self._deliver(batch)
                with self._cond:
                    self._cond.notify_all()  # flush() rechecks
                if outcome == _DONE:
                    if failing:
                        logger.info("agent_billing: delivery resumed")
                    failures, failing = 0, False
                    continue
                if outcome == _HALT:
                    return
                failures += 1
                failing = True
                self._count(retries=1)
                if failures == 1:
                    logger.warning(
                        "agent_billing: delivery failed (%s); retrying with backoff, %d event(s) "
                        "stay spooled",
                        self.last_error,
                        self._spool.pending(),
                    )
                else:
                    logger.debug("agent_billing: delivery failed again (%s)", self.last_error)
                if delay is not None:  # the service said when (Retry-After)
                    self._sleep(delay, interruptible=False)
                    continue
                if failures > self.max_retries:
                    logger.error(
                        "agent_billing: delivery failed %d times (%s); %d event(s) stay "
                        "spooled in %s; retrying every %g s",
                        failures,
                        self.last_error,
                        self._spool.pending(),
                        self.spool_path,
                        self.max_backoff,
                    )
                    failures = 0
                    delay = self.max_backoff
                else:  # exponential backoff with full jitter; not for security
                    ceiling = min(self.max_backoff, self.backoff_base * 2 ** (failures - 1))
                    delay = random.uniform(0, ceiling)  # noqa: S311
                self._sleep(delay, interruptible=True)
        finally:
            self._delivery_lock.release()

    def _deliver(self, batch: list[SpooledEvent]) -> tuple[str, float | None]:
        """Send one batch and apply the answer to the spool."""
        payload = ('{"events":[' + ",".join(e.body for e in batch) + "]}").encode("utf-8")
        self._spool.note_attempt([e.seq for e in batch])
        try:
            response = self._http.request("POST", EVENTS_PATH, payload)
        except TransportError as exc:
            self.last_error = f"network error: {exc}"
            return _RETRY, None
        status, body = response.status, response.body
        self._count(batches=1)
        if status in (202, 409) and isinstance(body, dict) and isinstance(body.get("events"), list):
            return self._settle(batch, body)
        if status == 422:
            return self._refused(batch, response)
        if status in (400, 413):
            return self._split(batch, response)
        if status in (401, 403):
            self._halted = True
            self.last_error = f"HTTP {status}: {_message(body)}"
            logger.critical(
                "agent_billing: the service refused the API key (HTTP %d: %s). Delivery is "
                "STOPPED; %d event(s) are kept in the spool %s and will be sent by a client "
                "with a valid key.",
                status,
                _message(body),
                self._spool.pending(),
                self.spool_path,
            )
            return _HALT, None
        self.last_error = f"HTTP {status}: {_message(body)}"
        if status == 429:
            wait = response.retry_after()
            if wait is not None:
                wait = min(wait, MAX_RETRY_AFTER)
            logger.warning("agent_billing: rate limited (429); retrying in %s s", wait)
            return _RETRY, wait
        return _RETRY, None  # 5xx, 404, 408, 415...: a service or proxy problem, not the events

    def _settle(self, batch: list[SpooledEvent], body: dict[str, Any]) -> tuple[str, float | None]:
        answers = body["events"]
        if len(answers) != len(batch) or any(
            not isinstance(a, dict) or a.get("event_id") != e.event_id
            for a, e in zip(answers, batch, strict=False)
        ):
            self.last_error = "the service's answer does not match the batch"
            logger.error("agent_billing: %s; will retry", self.last_error)
            return _RETRY, None
        delivered: list[int] = []
        conflicts: list[SpooledEvent] = []
        counts = {"accepted": 0, "duplicates": 0, "conflicts": 0}
        for answer, event in zip(answers, batch, strict=True):
            status = answer.get("status")
            if status == "accepted":
                counts["accepted"] += 1
                delivered.append(event.seq)
            elif status == "duplicate":
                counts["duplicates"] += 1
                delivered.append(event.seq)
            elif status == "conflict":
                counts["conflicts"] += 1
                conflicts.append(event)
            else:
                self.last_error = f"unknown event status {status!r} in the service's answer"
                logger.error("agent_billing: %s; will retry", self.last_error)
                return _RETRY, None
        self._spool.settle(delivered=delivered, conflicts=conflicts, dead=[])
        self._count(**counts)
        self._batch_limit = min(self.batch_size, self._batch_limit * 2)
        if conflicts:
            logger.warning(
                "agent_billing: %d event(s) reused an event id with a different payload; the "
                "service kept the first payload (a client bug; see client.conflicts()): %s",
                len(conflicts),
                ", ".join(f"{e.customer_id}/{e.event_id}" for e in conflicts[:5]),
            )
        customers = body.get("customers")
        if isinstance(customers, dict):
            self._remember_statuses(customers)
        return _DONE, None

    def _refused(self, batch: list[SpooledEvent], response: Response) -> tuple[str, float | None]:
        """422: move the events the errors point at to the dead letters; the rest go again."""
        errors = response.body.get("errors") if isinstance(response.body, dict) else None
        messages: dict[int, list[str]] = {}
        for error in errors if isinstance(errors, list) else []:
            if not isinstance(error, dict):
                continue
            index = error.get("index")
            if isinstance(index, int) and 0 <= index < len(batch):
                messages.setdefault(index, []).append(
                    f"{error.get('field')}: {error.get('message')}"
                )
        if not messages:  # an error about the request as a whole (e.g. the batch size)
            return self._split(batch, response)
        dead = [(batch[i], 422, "; ".join(text)) for i, text in sorted(messages.items())]
        self._spool.settle(delivered=[], conflicts=[], dead=dead)
        self._count(dead_lettered=len(dead))
        logger.error(
            "agent_billing: the service refused %d event(s) as invalid; they are kept as dead "
            "letters (client.dead_letters()) and the rest of the batch is sent again: %s",
            len(dead),
            "; ".join(f"{e.event_id}: {msg}" for e, _, msg in dead[:5]),
        )
        return _DONE, None

    def _split(self, batch: list[SpooledEvent], response: Response) -> tuple[str, float | None]:
        """A refusal that names no event (400, 413, 422 on the whole request): halve the
        batch until the one event at fault is alone, then dead-letter it."""
        message = f"HTTP {response.status}: {_message(response.body)}"
        if len(batch) > 1:
            self._batch_limit = max(1, len(batch) // 2)
            logger.warning(
                "agent_billing: %s; retrying in batches of %d", message, self._batch_limit
            )
            return _DONE, None
        self._spool.settle(delivered=[], conflicts=[], dead=[(batch[0], response.status, message)])
        self._count(dead_lettered=1)
        logger.error(
            "agent_billing: the service refused event %s (%s); kept as a dead letter",
            batch[0].event_id,
            message,
        )
        return _DONE, None

    # --- budgets -----------------------------------------------------------------------

    def allowance(self, customer_id: str, *, refresh: bool = False) -> dict[str, Any]:
        """The customer's allowance from `GET /api/v1/customers/<id>/allowance`, cached for
        `allowance_ttl` seconds: status ("active", "warning" or "paused"), currency,
        cap_minor, spent_minor, remaining_minor, period_start, period_end."""
        customer_id = _validation.customer_id(customer_id)
        if not refresh:
            with self._cache_lock:
                entry = self._cache.get(customer_id)
                if entry is not None and entry.complete and self._fresh(entry):
                    return dict(entry.data)
        self._check_process()
        path = f"/api/v1/customers/{Http.quote(customer_id)}/allowance"
        try:
            response = self._http.request("GET", path)
        except TransportError as exc:
            raise ServiceUnavailable(f"allowance of {customer_id!r}: {exc}") from exc
        body = response.body
        if response.status == 200 and isinstance(body, dict) and "status" in body:
            with self._cache_lock:
                self._cache[customer_id] = _Cached(time.monotonic(), dict(body), complete=True)
            return dict(body)
        message = f"allowance of {customer_id!r}: HTTP {response.status}: {_message(body)}"
        if response.status in (401, 403):
            raise AuthenticationError(message, status=response.status, body=body)
        if response.status == 429 or response.status >= 500:
            raise ServiceUnavailable(message)
        raise ApiError(message, status=response.status, body=body)

    def ensure_allowed(self, customer_id: str) -> dict[str, Any]:
        """Raise BudgetExceeded when the customer is paused; else return its allowance.

        Cheap enough to call before every task: the answer is cached for `allowance_ttl`
        seconds and refreshed by every ingestion response. When the service cannot be
        reached, the last known status is used; with none, work is allowed (fail open) unless
        the client was made with allowance_fail_open=False.
        """
        customer_id = _validation.customer_id(customer_id)
        with self._cache_lock:
            entry = self._cache.get(customer_id)
        if entry is not None and self._fresh(entry):
            data = dict(entry.data)
        else:
            try:
                data = self.allowance(customer_id, refresh=True)
            except ServiceUnavailable as exc:
                if entry is not None:
                    logger.warning("agent_billing: %s; using the last known status", exc)
                    data = dict(entry.data)
                elif self.allowance_fail_open:
                    logger.warning("agent_billing: %s; allowing the work (fail open)", exc)
                    return {"customer_id": customer_id, "status": "unknown"}
                else:
                    raise
        if data.get("status") == "paused":
            raise BudgetExceeded(customer_id, data)
        return data

    def _fresh(self, entry: _Cached) -> bool:
        return time.monotonic() - entry.at < self.allowance_ttl

    def _remember_statuses(self, customers: dict[str, Any]) -> None:
        now = time.monotonic()
        with self._cache_lock:
            for customer_id, state in customers.items():
                if not isinstance(state, dict) or "status" not in state:
                    continue
                update = {
                    "status": state["status"],
                    "remaining_minor": state.get("remaining_minor"),
                }
                entry = self._cache.get(customer_id)
                if entry is not None:
                    self._cache[customer_id] = _Cached(
                        now, {**entry.data, **update}, entry.complete
                    )
                else:
                    self._cache[customer_id] = _Cached(now, update, complete=False)

    # --- inspection --------------------------------------------------------------------

    def _count(self, **increments: int) -> None:
        with self._stats_lock:
            for key, value in increments.items():
                self._stats[key] += value

    @property
    def stats(self) -> dict[str, Any]:
        """Counters since this client started, and the spool's current state."""
        with self._stats_lock:
            snapshot: dict[str, Any] = dict(self._stats)
        snapshot["pending"] = self._final_pending if self._closed else self._spool.pending()
        snapshot["delivery_stopped"] = self._halted
        snapshot["last_error"] = self.last_error
        return snapshot

    def pending(self) -> int:
        """Events in the spool not yet confirmed by the service."""
        self._check_process()
        return self._spool.pending()

    def dead_letters(self) -> list[dict[str, Any]]:
        """Events the service refused as invalid, with its error message."""
        self._check_process()
        return self._spool.dead_letters()

    def requeue_dead_letters(self, seqs: list[int] | None = None) -> int:
        """Send dead letters (all, or those with these `seq`s) again, e.g. after creating a
        missing customer or meter. Returns how many were requeued."""
        self._check_process()
        moved = self._spool.requeue_dead_letters(seqs)
        with self._cond:
            self._kick = True
            self._cond.notify_all()
        return moved

    def conflicts(self) -> list[dict[str, Any]]:
        """Events whose id was already used with another payload (the first one is billed)."""
        self._check_process()
        return self._spool.conflicts()


def _without_timestamp(body: str) -> dict[str, Any]:
    event = json.loads(body)
    event.pop("timestamp", None)
    return event


def _message(body: Any) -> str:
    if isinstance(body, dict):
        errors = body.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            return "; ".join(
                f"{e.get('field')}: {e.get('message')}" for e in errors[:3] if isinstance(e, dict)
            )
        for key in ("detail", "message", "error"):
            if key in body:
                return str(body[key])
    text = str(body or "")
    return text[:200]
