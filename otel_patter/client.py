"""A small synchronous client of the otel-patter admin API, for acceptance suites (standard library only).

    from otel_patter.client import PatterCalls

    calls = PatterCalls("http://localhost:4319")          # or $OTEL_PATTER_URL
    calls.wait("CA0123...", timeout=60).assert_budget(usd=0.05, p95_ms=1200)
    calls.find(test_run_id="run-42", side="uut").assert_budget(usd=0.05)

`assert_budget` raises `AssertionError` whose message lists the cost by component, the usage
lines and the latency figures, so a failing test says why. A call whose usage is partly unpriced
(`cost_complete: false`) fails unless `allow_unpriced=True`: an LLM without a rate would otherwise
pass every budget at $0.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

DEFAULT_URL = "http://localhost:4319"
URL_ENV = "OTEL_PATTER_URL"
TOKEN_ENV = "OTEL_PATTER_TOKEN"
COMPONENTS = ("stt", "tts", "llm", "telephony", "realtime")
BUDGET_SOURCES = ("spans", "sdk", "max")  # whose USD a budget checks (see CallResult.budget_usd)
_SLACK_S = 10.0  # the HTTP timeout of a long poll: the server's wait plus this


class PatterCallsError(Exception):
    """The server could not be asked, or refused the question (bad parameters, auth)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class CallNotFound(PatterCallsError):
    """No span of this call has reached otel-patter."""


class CallNotFinal(PatterCallsError, TimeoutError):
    """A wait timed out; `calls` holds what is known now (the partial envelope(s), maybe none)."""

    def __init__(self, message: str, calls: list[CallResult]) -> None:
        super().__init__(message, 408)
        self.calls = calls


def _usd(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return "n/a"
    return f"${Decimal(str(v)).quantize(Decimal('0.000001'))}"


def num(v: int | float) -> str:
    """A figure as the envelope has it, without float noise or exponents: 1223.505, 73, 1270, 0.2468."""
    if isinstance(v, int):
        return str(v)
    return format(v, ".6f").rstrip("0").rstrip(".")


def _ms(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return "n/a"
    return f"{num(v)} ms"


def _quantity(line: Mapping[str, Any]) -> str:
    parts = []
    for key, unit in (("seconds", "s"), ("chars", "chars"), ("input_tokens", "input tokens"),
                      ("output_tokens", "output tokens"), ("minutes", "min"), ("billed_minutes", "billed min")):
        v = line.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool):
            parts.append(f"{num(v)} {unit}")
    return ", ".join(parts)


@dataclass(frozen=True)
class CallResult:
    """One call's envelope (`envelope`), with the figures a test asserts on."""

    envelope: dict[str, Any]

    @property
    def call_id(self) -> str:
        return str(self.envelope.get("call_id"))

    @property
    def status(self) -> str:
        return str(self.envelope.get("status"))

    @property
    def final(self) -> bool:
        return self.status != "in_progress"

    @property
    def cost_complete(self) -> bool:
        return bool(self.envelope.get("cost_complete", False))

    def side(self, side: str = "uut") -> dict[str, Any]:
        """The figures of one side (`cost`, `usage`, `turns`, `latency`, `counts`); {} when the call has none."""
        return dict((self.envelope.get("sides") or {}).get(side) or {})

    def usd(self, side: str = "uut") -> float:
        """Total USD of a side (6 places, as the envelope has it)."""
        return float((self.side(side).get("cost") or {}).get("total", 0.0))

    def p95_ms(self, side: str = "uut") -> float | None:
        return (self.side(side).get("latency") or {}).get("p95_ms")

    def sdk_usd(self) -> float | None:
        """The SDK's own total for the call (its call_end report, via sdk_ingest; the SDK reports its uut side),
        or None when there is no such report."""
        total = ((self.envelope.get("reconciliation") or {}).get("sdk") or {}).get("total")
        return float(total) if isinstance(total, int | float) and not isinstance(total, bool) else None

    def budget_usd(self, side: str = "uut", source: str = "max") -> tuple[float | None, str]:
        """The USD a budget is checked against and whose it is (`spans` or `sdk`): otel-patter's from spans,
        the SDK's own call report, or (`max`) the larger of the two, spans alone when there is no report.
        (None, "sdk") when `source` is `sdk` and there is no report."""
        if source not in BUDGET_SOURCES:
            raise ValueError(f"source must be one of {', '.join(BUDGET_SOURCES)}, got {source!r}")
        spans = self.usd(side)
        sdk = self.sdk_usd() if side == "uut" and source != "spans" else None
        if source == "sdk":
            return sdk, "sdk"
        if sdk is not None and Decimal(str(sdk)) > Decimal(str(spans)):
            return sdk, "sdk"
        return spans, "spans"

    def assert_budget(self, usd: float | None = None, p95_ms: float | None = None, side: str = "uut",
                      allow_unpriced: bool = False, source: str = "max") -> CallResult:
        """Fail (AssertionError) when this side costs more than `usd`, its p95 turn latency is over `p95_ms`,
        the call is not final yet, or its cost is incomplete (unless `allow_unpriced`). Returns self.

        `source` picks the USD (see `budget_usd`): by default the larger of otel-patter's and the SDK's own."""
        problems: list[str] = []
        figures = self.side(side)
        if not figures:
            have = ", ".join(sorted(self.envelope.get("sides") or {})) or "none"
            raise AssertionError(f"call {self.call_id} has no {side} side (sides: {have})")
        total, whose = self.budget_usd(side, source)
        if total is None:
            raise AssertionError(f"call {self.call_id} has no SDK call report for source {source!r} (the SDK "
                                 "reports its uut side; is sdk_ingest on?)")
        if not self.final:
            problems.append(f"the call is still {self.status} (revision {self.envelope.get('revision')}): "
                            "wait for it to be final first")
        if usd is not None and Decimal(str(total)) > Decimal(str(usd)):
            over = Decimal(str(total)) - Decimal(str(usd))
            problems.append(f"cost {_usd(total)}" + (" (the SDK's own call report)" if whose == "sdk" else "")
                            + f" is over the budget of {_usd(usd)} by {_usd(float(over))}"
                            + (f" (otel-patter's from spans: {_usd(self.usd(side))})" if whose == "sdk" else ""))
        unpriced = [u for u in self.envelope.get("unpriced") or () if u.get("side") == side]
        if unpriced and not allow_unpriced:
            problems.append(f"cost is incomplete: {len(unpriced)} usage line(s) have no rate, so the total "
                            f"{_usd(total)} leaves them out (pass allow_unpriced=True to accept that)")
        p95 = (figures.get("latency") or {}).get("p95_ms")
        if p95_ms is not None:
            if p95 is None:
                problems.append(f"p95 turn latency was to be at most {_ms(p95_ms)}, but no turn latency was recorded")
            elif p95 > p95_ms:
                problems.append(f"p95 turn latency {_ms(p95)} is over the budget of {_ms(p95_ms)}")
        if problems:
            head = f"call {self.call_id} ({side} side) is over budget:\n" + "".join(f"  - {p}\n" for p in problems)
            raise AssertionError(head + self.report(side))
        return self

    def report(self, side: str = "uut") -> str:
        """Cost by component, usage lines, unpriced lines and latency figures of one side, as text."""
        figures = self.side(side)
        cost = figures.get("cost") or {}
        lines = ["cost by component (USD):"]
        lines += [f"  {c:<10} {_usd(cost.get(c))}" for c in (*COMPONENTS, "total")]
        lines.append("usage:")
        usage = figures.get("usage") or {}
        if not any(usage.values()):
            lines.append("  (none)")
        for comp, items in usage.items():
            for u in items:
                model = f" {u['model']}" if u.get("model") else ""
                priced = _usd(u.get("usd")) if u.get("usd") is not None else "UNPRICED"
                lines.append(f"  {comp:<10} {u.get('provider')}{model}: {_quantity(u)} = {priced}")
        unpriced = [u for u in self.envelope.get("unpriced") or () if u.get("side") == side]
        if unpriced:
            lines.append("unpriced:")
            for u in unpriced:
                model = f" {u['model']}" if u.get("model") else ""
                lines.append(f"  {u.get('component'):<10} {u.get('provider', '?')}{model}: {_quantity(u)} "
                             f"({u.get('reason')})")
        lat = figures.get("latency") or {}
        lines.append("latency: " + ", ".join(f"{k} {_ms(lat.get(k))}" for k in
                                             ("p50_ms", "p95_ms", "p99_ms", "llm_ttft_p50_ms", "turn_p50_ms")))
        turns = [v for v in lat.get("turns_ms") or () if isinstance(v, int | float)]
        if turns:
            slowest = sorted(enumerate(turns, 1), key=lambda t: -t[1])[:3]
            lines.append("slowest turns: " + ", ".join(f"turn {i} {_ms(v)}" for i, v in slowest))
        counts = figures.get("counts") or {}
        lines.append(f"turns {figures.get('turns', 0)}, spans {counts.get('spans', 0)}, "
                     f"errors {counts.get('errors', 0)}, status {self.status}")
        return "\n".join(lines)


class CallList(list[CallResult]):
    """One page of calls; `next_cursor` asks for the next page (None on the last)."""

    next_cursor: str | None = None


class PatterCalls:
    """The calls API of one otel-patter server. Nothing connects until a method is called."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30.0) -> None:
        self.url = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        self._token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"PatterCalls({self.url!r})"

    # -- transport -----------------------------------------------------------------------------------
    def _request(self, method: str, path: str, query: Mapping[str, Any] | None = None,
                 timeout: float | None = None) -> tuple[int, Any]:
        q = {k: str(v) for k, v in (query or {}).items() if v is not None}
        url = self.url + path + ("?" + urllib.parse.urlencode(q) if q else "")
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        req = urllib.request.Request(url, method=method, headers=headers, data=b"" if method == "POST" else None)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            try:
                body = json.loads(e.read())
            except ValueError:
                body = {"error": f"HTTP {e.code}"}
            return e.code, body
        except (OSError, ValueError) as e:
            raise PatterCallsError(f"cannot reach otel-patter at {self.url}: {e}") from e

    @staticmethod
    def _fail(code: int, body: Any, what: str) -> PatterCallsError:
        message = body.get("error") if isinstance(body, dict) else None
        if code == 404:
            return CallNotFound(f"{what}: no such call", code)
        return PatterCallsError(f"{what}: HTTP {code}: {message or body}", code)

    @staticmethod
    def _path(call_id: str) -> str:
        return "/api/v1/calls/" + urllib.parse.quote(call_id, safe="")

    # -- calls --------------------------------------------------------------------------------------
    def get(self, call_id: str) -> CallResult:
        """The call as it is now (maybe still in progress)."""
        code, body = self._request("GET", self._path(call_id))
        if code != 200:
            raise self._fail(code, body, f"call {call_id}")
        return CallResult(body)

    def wait(self, call_id: str, timeout: float = 60.0) -> CallResult:
        """The call once it is final; an id not seen yet is waited for too. `CallNotFinal` after `timeout` s."""
        code, body = self._request("GET", self._path(call_id), {"wait": "final", "timeout": timeout},
                                   timeout=timeout + _SLACK_S)
        if code == 408:
            partial = [CallResult(body["call"])] if isinstance(body, dict) and body.get("call") else []
            state = f"still {partial[0].status}" if partial else "no span of it arrived"
            raise CallNotFinal(f"call {call_id} not final after {timeout:g} s ({state})", partial)
        if code != 200:
            raise self._fail(code, body, f"call {call_id}")
        return CallResult(body)

    def list(self, *, status: str | None = None, since: str | None = None, side: str | None = None,
             min_cost_usd: float | None = None, test_run_id: str | None = None, limit: int = 100,
             cursor: str | None = None, wait: bool = False, timeout: float = 60.0, min_count: int = 1) -> CallList:
        """One page of calls, newest first. With `wait`, once `min_count` calls match and all are final."""
        query: dict[str, Any] = {"status": status, "since": since, "side": side, "min_cost_usd": min_cost_usd,
                                 "test_run_id": test_run_id, "limit": limit, "cursor": cursor}
        if wait:
            query.update(wait="final", timeout=timeout, min_count=min_count)
        code, body = self._request("GET", "/api/v1/calls", query, timeout=(timeout if wait else 0) + self.timeout)
        if code == 408:
            partial = [CallResult(c) for c in body.get("calls", [])]
            raise CallNotFinal(f"{len(partial)} call(s) match, not all final (or fewer than {min_count}) "
                               f"after {timeout:g} s", partial)
        if code != 200:
            raise self._fail(code, body, "list calls")
        out = CallList(CallResult(c) for c in body["calls"])
        out.next_cursor = body.get("next_cursor")
        return out

    def iter(self, **filters: Any) -> Iterator[CallResult]:
        """Every matching call, newest first, page by page."""
        cursor = None
        while True:
            page = self.list(cursor=cursor, **filters)
            yield from page
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def find_all(self, test_run_id: str, side: str = "uut", wait: bool = True, timeout: float = 60.0,
                 min_count: int = 1) -> list[CallResult]:
        """The calls whose `side` spans carried resource attribute `test.run_id` = `test_run_id`."""
        return list(self.list(test_run_id=test_run_id, side=side, wait=wait, timeout=timeout, min_count=min_count,
                              limit=1000))

    def find(self, test_run_id: str, side: str = "uut", wait: bool = True, timeout: float = 60.0) -> CallResult:
        """The one call of a test run (set `OTEL_RESOURCE_ATTRIBUTES=test.run_id=...` on the app under test)."""
        found = self.find_all(test_run_id, side=side, wait=wait, timeout=timeout)
        if not found:
            raise CallNotFound(f"no call with test.run_id={test_run_id!r} on its {side} side")
        if len(found) > 1:
            ids = ", ".join(c.call_id for c in found)
            raise PatterCallsError(f"{len(found)} calls have test.run_id={test_run_id!r} on their {side} side "
                                   f"({ids}); use find_all()")
        return found[0]

    def finalize(self, call_id: str) -> CallResult:
        """Finalize the call now (instead of waiting for its hang-up or idle timeout)."""
        code, body = self._request("POST", self._path(call_id) + "/finalize")
        if code not in (200, 202):
            raise self._fail(code, body, f"finalize {call_id}")
        return CallResult(body)
