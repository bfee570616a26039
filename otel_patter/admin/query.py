"""The calls query of `GET /api/v1/calls`: parse, filter, order, page. Shared by the API and the CLI.

Order is newest first by `started_at`, ties broken by `call_id` (both descending), so a page is a
slice of one total order. The cursor is opaque to clients: it names the last call of the previous
page (its start and id), so paging stays stable while new calls arrive (they sort before it).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from otel_patter.store.envelope_store import parse_iso

STATUSES = ("in_progress", "completed", "error", "idle")
SIDES = ("uut", "driver")
MAX_WAIT_S = 600.0
DEFAULT_WAIT_S = 30.0
MAX_LIMIT = 10_000
DEFAULT_LIMIT = 100
MAX_MIN_COUNT = 1_000
MAX_RUN_ID_LEN = 256
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_NUMBER = re.compile(r"^[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?$")  # a non-negative JSON number
LIST_PARAMS = frozenset({"status", "since", "side", "min_cost_usd", "test_run_id", "limit", "cursor", "wait",
                         "timeout", "min_count"})
GET_PARAMS = frozenset({"wait", "timeout"})

# Units of the figures in an envelope (key names say most of it: `*_ms`, `usd`, `seconds`, ...).
UNITS = {
    "cost": "USD (every component and total, rounded half-even to 6 places)",
    "usd": "USD",
    "*_ms": "milliseconds",
    "seconds": "seconds",
    "minutes": "minutes",
    "billed_minutes": "minutes",
    "chars": "characters",
    "*_tokens": "tokens",
    "started_at": "ISO 8601 UTC",
}


class QueryError(ValueError):
    """A bad query parameter; the message is safe to return to the client."""


def parse_since(value: str, now: float | None = None) -> float:
    """`1h`, `30m`, an ISO timestamp or epoch seconds -> epoch seconds."""
    now = time.time() if now is None else now
    v = value.strip()
    m = _DURATION.match(v)
    if m:
        return now - float(m.group(1)) * _UNIT_S[m.group(2)]
    if _NUMBER.match(v):
        return float(v)
    return parse_iso(v)


def parse_seconds(value: str, name: str, maximum: float) -> float:
    """A non-negative number of seconds up to `maximum`."""
    v = value.strip()
    if not _NUMBER.match(v) or not math.isfinite(float(v)) or float(v) > maximum:
        raise QueryError(f"{name} must be a number of seconds from 0 to {maximum:g}")
    return float(v)


def check_params(q: Mapping[str, str], allowed: frozenset[str]) -> None:
    """Unknown or repeated parameters are errors: a typo such as `test_runid=` must not widen a query."""
    for key in q:
        if key not in allowed:
            raise QueryError(f"unknown query parameter {key[:64]!r} (expected: {', '.join(sorted(allowed))})")
    if hasattr(q, "getall"):
        for key in allowed:
            if len(q.getall(key, [])) > 1:  # type: ignore[attr-defined]
                raise QueryError(f"query parameter {key!r} given more than once")


def _int(value: str, name: str, lo: int, hi: int) -> int:
    v = value.strip()
    if not v.isascii() or not v.isdigit() or not lo <= int(v) <= hi:
        raise QueryError(f"{name} must be an integer from {lo} to {hi}")
    return int(v)


@dataclass(frozen=True, slots=True)
class CallsQuery:
    status: str | None = None
    since: float | None = None
    side: str | None = None
    min_cost_usd: Decimal | None = None
    test_run_id: str | None = None
    limit: int = DEFAULT_LIMIT
    cursor: tuple[str, str] | None = None
    wait: bool = False
    timeout: float = DEFAULT_WAIT_S
    min_count: int = 1

    @classmethod
    def parse(cls, q: Mapping[str, str], now: float | None = None) -> CallsQuery:
        check_params(q, LIST_PARAMS)
        # a parameter given empty is an error, not "no filter": `test_run_id=$UNSET` must not match every call
        status = q.get("status")
        if status is not None and status not in STATUSES:
            raise QueryError(f"status must be one of {', '.join(STATUSES)}")
        side = q.get("side")
        if side is not None and side not in SIDES:
            raise QueryError(f"side must be one of {', '.join(SIDES)}")
        since = None
        if "since" in q:
            try:
                since = parse_since(q["since"], now)
            except (ValueError, OverflowError):
                raise QueryError("since must be a duration like 30m or 1h, an ISO time or epoch seconds") from None
        min_cost = None
        if "min_cost_usd" in q:
            v = q["min_cost_usd"].strip()
            if not _NUMBER.match(v):
                raise QueryError("min_cost_usd must be a non-negative number of USD")
            try:
                min_cost = Decimal(v)
            except InvalidOperation:
                raise QueryError("min_cost_usd must be a non-negative number of USD") from None
        run_id = q.get("test_run_id")
        if run_id is not None and not 1 <= len(run_id) <= MAX_RUN_ID_LEN:
            raise QueryError(f"test_run_id must be 1 to {MAX_RUN_ID_LEN} characters")
        limit = _int(q["limit"], "limit", 1, MAX_LIMIT) if "limit" in q else DEFAULT_LIMIT
        cursor = decode_cursor(q["cursor"]) if "cursor" in q else None
        wait = parse_wait(q)
        timeout = parse_seconds(q["timeout"], "timeout", MAX_WAIT_S) if "timeout" in q else DEFAULT_WAIT_S
        min_count = _int(q["min_count"], "min_count", 1, MAX_MIN_COUNT) if "min_count" in q else 1
        return cls(status=status, since=since, side=side, min_cost_usd=min_cost, test_run_id=run_id, limit=limit,
                   cursor=cursor, wait=wait, timeout=timeout, min_count=min_count)

    def matches(self, env: Mapping[str, Any]) -> bool:
        """Every filter but the cursor."""
        if self.status and env.get("status") != self.status:
            return False
        sides = env.get("sides") or {}
        if self.side and self.side not in sides:
            return False
        if self.since is not None:
            started = env.get("started_at")
            try:
                if not started or parse_iso(started) < self.since:
                    return False
            except ValueError:
                return False
        if self.test_run_id is not None:
            where = (sides.get(self.side) or {}) if self.side else env
            if self.test_run_id not in (where.get("test_run_id") or ()):
                return False
        if self.min_cost_usd is not None:
            where = (sides.get(self.side) or {}) if self.side else env
            total = (where.get("cost") or {}).get("total")
            if not isinstance(total, int | float) or Decimal(str(total)) < self.min_cost_usd:
                return False
        return True

    def select(self, calls: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every match, newest first (no cursor, no limit)."""
        return sorted((c for c in calls if self.matches(c)), key=order_key, reverse=True)

    def page(self, matches: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
        """One page of `select()`'s result after the cursor, and the cursor of the next page (or None)."""
        rest = matches if self.cursor is None else [c for c in matches if order_key(c) < self.cursor]
        page = rest[: self.limit]
        nxt = encode_cursor(order_key(page[-1])) if len(rest) > self.limit else None
        return page, nxt

    def satisfied(self, matches: list[dict[str, Any]]) -> bool:
        """For `wait=final`: enough calls match and none of them is still in progress."""
        return len(matches) >= self.min_count and all(c.get("status") != "in_progress" for c in matches)


def parse_wait(q: Mapping[str, str]) -> bool:
    wait = q.get("wait")
    if wait is None:
        return False
    if wait != "final":
        raise QueryError("wait must be final")
    return True


def order_key(env: Mapping[str, Any]) -> tuple[str, str]:
    return (str(env.get("started_at") or ""), str(env.get("call_id") or ""))


def encode_cursor(key: tuple[str, str]) -> str:
    raw = json.dumps(list(key), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(value: str) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        key = json.loads(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise QueryError("cursor is not one this server gave out") from None
    if not (isinstance(key, list) and len(key) == 2 and all(isinstance(k, str) for k in key)):
        raise QueryError("cursor is not one this server gave out")
    return (key[0], key[1])


def filter_calls(calls: list[dict[str, Any]], *, status: str | None = None, since: float | None = None,
                 side: str | None = None, limit: int = DEFAULT_LIMIT, test_run_id: str | None = None,
                 min_cost_usd: float | None = None) -> list[dict[str, Any]]:
    """The first page of the calls matching these filters, newest first (the CLI's log-dir mode)."""
    q = CallsQuery(status=status, since=since, side=side, test_run_id=test_run_id, limit=limit,
                   min_cost_usd=None if min_cost_usd is None else Decimal(str(min_cost_usd)))
    return q.select(calls)[:limit]
