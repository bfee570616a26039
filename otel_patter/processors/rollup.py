"""Rollup: which call each span belongs to, and when a call is final.

Two phases around the store so that nothing is counted before it is durable:
`assign(batch)` decides (call id, side, duplicates, pending) without counting anything
(it may replay calls from disk, see below) and leaves a `WritePlan` on the batch; the
store makes the plan durable; `apply(batch)`
then folds the spans into per-call aggregates. `tick()` finalizes calls on their
signals (0.6 root span end, hang-up usage, a finalize request) or on idle.

After a restart the service is ready at once: open calls are replayed from their WALs in
the background (`recover_step`), and any call a request touches is replayed first
(`_state`), so every answer is exact while the rest load. Spans of a call's trace that
waited in pending while it was on disk are counted before the call is read (`_settled_state`)
or finalized (`tick`).

Call identity (DESIGN.md "Call identity"): `patter.call_id`, `patter.call.id`,
`getpatter.call.id` on the span, then on the resource, then another span of the same
trace. Never the trace alone: 0.7.0 starts a new trace for most top-level spans.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from otel_patter.component import TraceBatch
from otel_patter.config import Config
from otel_patter.pricing import PriceBook
from otel_patter.processors.envelope import ModelDefaults, build_envelope
from otel_patter.processors.rollup_state import SIDES, CallState, SeenKeys, first_call_id
from otel_patter.processors.sdk_report import WAL_TYPE as SDK_REPORT
from otel_patter.processors.sdk_report import apply_report, replay_report, report_start, sdk_wal_line
from otel_patter.selfmetrics import LabelledChildren, SelfMetrics
from otel_patter.spans import SpanRecord
from otel_patter.store.envelope_store import EnvelopeStore, StoreError, parse_iso
from otel_patter.store.paths import relative_call_dir, valid_call_id
from otel_patter.store.span_wal import write_plan

log = logging.getLogger("otel_patter.rollup")

OWN_SERVICE = "otel-patter"
TRACE_MAP_MAX = 200_000
TRACE_KEY_MASK = (1 << 60) - 1  # ints below 2**60 take 32 bytes
EVICT_AFTER_S = 120.0
EVICT_SWEEP_S = 5.0  # final calls are evicted by a sweep this often (not by every tick)
EVICT_SLICE = 2000  # calls a tick slice looks at for eviction (a sweep of 100k calls at once held the loop ~80 ms)
HEAP_SLACK = 1024  # stale deadline entries tolerated beyond two per call before the heap is rebuilt
# touched calls a tick slice judges at least (~1 ms) before its budget may stop it: a restart's replay touches every
# open call at once, and judging 10k in one go held the event loop ~35 ms (50k: ~190-315 ms)
TOUCHED_SLICE_MIN = 256
ENVELOPE_DEBOUNCE_S = 10.0  # an open call's envelope file is rewritten at most this often (the API is live)
RECOVER_SLICE_S = 0.005  # the longest a background replay step holds the event loop after a restart
RECOVER_ATTEMPTS = 3  # replays of one open call before it is left on disk (logged)
RECOVER_RETRY_S = 1.0  # after a restart, a failed replay or a failed write of resolved pending spans: again after


def _envelope_due_at(state: CallState) -> float:
    """When an open call's next envelope write is due (its key in the heap of envelopes due)."""
    return state.last_write + ENVELOPE_DEBOUNCE_S


@dataclass(slots=True)
class WritePlan:
    by_call: dict[str, list[SpanRecord]] = field(default_factory=dict)
    packed: dict[str, list[bytes | None]] = field(default_factory=dict)  # by_call's keys, SeenKeys.pack()ed
    reldirs: dict[str, str] = field(default_factory=dict)
    index: list[dict[str, Any]] = field(default_factory=list)
    pending: list[SpanRecord] = field(default_factory=list)
    resolved_pending: list[SpanRecord] = field(default_factory=list)
    duplicates: int = 0


class RollupProcessor:
    def __init__(self, cfg: Config, store: EnvelopeStore, book: PriceBook, metrics: SelfMetrics,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.store = store
        self.book = book
        self.metrics = metrics
        self.clock = clock
        self.defaults = ModelDefaults(dict(cfg.llm_default_model), dict(cfg.stt_default_model),
                                      dict(cfg.tts_default_model))
        self.calls: dict[str, CallState] = {}
        self.index: dict[str, dict[str, Any]] = {}
        # trace id -> call id, oldest first, keyed by 60 bits of the trace id's hash: a 32-byte int where the id's
        # own int costs 44 and its str 81 (22 traces an open 0.7.0 call). Two live traces share a key with a
        # chance of ~1e-8 at the 200k cap; only spans that carry no call id are attributed through it.
        self.trace_calls: dict[int, str] = {}
        self.pending: dict[str, list[tuple[SpanRecord, float]]] = {}
        self._pending_dirty = False
        # each pending span's line of the pending log, encoded at the first rewrite that holds it: a rewrite (after
        # any pending span resolved or expired) joins them instead of encoding every span again (10k pending
        # spans: ~100 ms a rewrite)
        self._pending_lines: dict[tuple[str, str], tuple[SpanRecord, float, str]] = {}
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        # outputs that must not be lost (the forward queue's summary span) run before the call is final on disk,
        # so a crash between them makes the call open again after a restart and it is finalized (and they run)
        # again; the rest (metrics, waiters) run after
        self.before_final: list[Callable[[CallState, dict[str, Any]], None]] = []
        self.on_final: list[Callable[[CallState, dict[str, Any]], None]] = []
        # a final call is about to change: (state, its final envelope as it stands, built only when asked for)
        self.on_reopen: list[Callable[[CallState, Callable[[], dict[str, Any]]], None]] = []
        self._before_done: dict[str, int] = {}  # call id -> revision whose before_final hooks ran (finalize retries)
        self.ready = False
        # finalization without looking at every call every tick: a heap of (when to look again, call id), and the
        # calls whose deadline may have moved since (a span, a finalize request, an SDK report, a restart)
        self._deadlines: list[tuple[float, str]] = []
        # (when its debounce ends, call id) of open calls with changes not yet in their envelope file: one entry a
        # call (`CallState.write_queued`), so a tick looks only at calls whose envelope is due, never at them all
        self._envelopes_due: list[tuple[float, str]] = []
        self._touched: set[str] = set()
        self._retry_next_tick: set[str] = set()  # calls whose finalization the store refused in this tick
        self._tick_done = True  # the last tick() finished its slices: the next call starts a new tick
        self._child = LabelledChildren()
        self._evict_at = 0.0
        self._evict_scan: list[str] = []  # the calls the current sweep has still to look at
        self._batch_states: dict[str, CallState | None] = {}
        self._batch_sides: dict[tuple[str, int], tuple[dict[str, Any], str]] = {}  # _side_of, inside assign
        # after a restart: open calls of the index not replayed from their WAL yet (a dict as an ordered set), those
        # whose replay failed (attempts, when to try again: time.monotonic), and those left on disk after
        # RECOVER_ATTEMPTS (replayed when a request names them). All of them are open calls.
        self._unloaded: dict[str, None] = {}
        self._replay_retry: dict[str, tuple[int, float]] = {}
        self._left_on_disk: set[str] = set()
        self.recovering = False
        self._recovery: asyncio.Task[None] | None = None
        # traces with pending spans whose call was just replayed: counted before the call is read or finalized
        self._traces_to_resolve: set[str] = set()
        metrics.calls_open.set_function(self.open_calls)  # read at scrape time, not recounted per request
        metrics.spans_pending.set_function(lambda: sum(len(v) for v in self.pending.values()))  # likewise

    def open_calls(self) -> int:
        return sum(1 for s in self.calls.values() if not s.final) + len(self._unloaded) + len(self._replay_retry) + \
            len(self._left_on_disk)

    @property
    def calls_loading(self) -> int:
        """Open calls still to be replayed from disk after a restart."""
        return len(self._unloaded) + len(self._replay_retry)

    def _not_replayed(self, call_id: str) -> bool:
        """An open call not replayed since the restart."""
        return call_id in self._unloaded or call_id in self._replay_retry or call_id in self._left_on_disk

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self.begin_recovery()
        self.ready = True  # ingest and queries are exact while open calls load (see the module docstring)
        if self.recovering:
            self._recovery = asyncio.create_task(self._recover_in_background(), name="otel-patter-recover")

    async def shutdown(self) -> None:
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery
        self.flush_envelopes(force=True)

    # -- identity ------------------------------------------------------------------------------
    def _learn_trace(self, trace_id: str, call_id: str) -> None:
        traces = self.trace_calls
        key = hash(trace_id) & TRACE_KEY_MASK
        if key in traces:
            return
        traces[key] = call_id
        if len(traces) > TRACE_MAP_MAX:  # forget the oldest sixteenth at once (a dict pops its first key slowly)
            for old in list(itertools.islice(traces, TRACE_MAP_MAX // 16)):
                del traces[old]

    def _trace_call(self, trace_id: str) -> str | None:
        return self.trace_calls.get(hash(trace_id) & TRACE_KEY_MASK)

    def _side_of(self, rec: SpanRecord, cid: str, state: CallState | None) -> str:
        """The span's explicit side, else the one side its instance declared in the call, else uut."""
        resource = rec.resource
        side = rec.attrs.get("patter.side") or resource.get("patter.side")  # the span's side, else its resource's
        if side in SIDES:
            return side  # type: ignore[no-any-return]
        if state is None:
            return "uut"
        # inside assign neither the call's groups nor the batch's resources change: what a resource's instance
        # declared in the call is looked up once per (call, resource) (the records of one request share one)
        memo = self._batch_sides.get((cid, id(resource)))
        if memo is None or memo[0] is not resource:
            instance = str(resource.get("service.instance.id") or "")
            declared = {s for (i, s) in state.groups if i == instance and s in SIDES}
            memo = self._batch_sides[(cid, id(resource))] = (
                resource, next(iter(declared)) if len(declared) == 1 else "uut")
        return memo[1]

    def _state(self, call_id: str) -> CallState | None:
        """The call in memory, else replayed from its WAL (evicted after finalization, or not replayed yet since a
        restart). Inside `assign`; other callers use `_settled_state`."""
        state = self.calls.get(call_id)
        if state is None and call_id in self.index:
            if self._not_replayed(call_id):
                return self._recover_call(call_id)
            state = self._load(call_id, self.index[call_id])
        return state

    def _settled_state(self, call_id: str) -> CallState | None:
        """`_state` for a caller outside `assign` (queries, finalize requests, SDK reports): a call replayed
        now has the pending spans of its traces counted before the caller looks at it."""
        state = self._state(call_id)
        if self._traces_to_resolve:
            self._resolve_replayed_traces()
        return state

    # -- phase 1: decide ----------------------------------------------------------------------
    def assign(self, batch: TraceBatch) -> None:
        plan = WritePlan()
        batch.plan = plan
        local_traces: dict[str, str] = {}
        ids: list[str | None] = []
        valid: dict[str, bool] = {}
        last_resource: dict[str, Any] | None = None
        own = False
        resource_cid: str | None = None
        for rec in batch.records:
            cid = None
            if rec.resource is not last_resource:  # the records of one request share one resource dict: read it once
                last_resource = rec.resource
                own = last_resource.get("service.name") == OWN_SERVICE
                resource_cid = first_call_id(last_resource)
            if not own:
                cid = first_call_id(rec.attrs) or resource_cid  # call identity: the span's, then its resource's
                ok = valid.get(cid) if cid is not None else True
                if ok is None:
                    ok = valid[cid] = valid_call_id(cid)  # type: ignore[index,arg-type]
                if not ok:
                    self.metrics.spans_unattributed.labels("invalid_call_id").inc()
                    batch.messages.append("span with an invalid call id (too long or not printable) not rolled up")
                    cid = ""
                if cid:
                    local_traces.setdefault(rec.trace_id, cid)
            else:
                cid = ""
                self.metrics.spans_unattributed.labels("own_summary").inc()
            ids.append(cid)
        if self.recovering or self._left_on_disk:  # after a restart: the calls this batch names are replayed
            for cid in {c for c in ids if c and self._not_replayed(c)}:  # first, so the traces they know attribute
                self._recover_call(cid)  # its spans (an OSError here: the pipeline refuses, the client retries)
        seen_now: set[tuple[str, str]] = set()
        self._batch_states = {}
        self._batch_sides = {}
        for rec, cid in zip(batch.records, ids, strict=True):
            if cid == "":
                continue
            if cid is None:
                cid = local_traces.get(rec.trace_id) or self._trace_call(rec.trace_id)
            if cid is None:
                if rec.key in seen_now or any(r.key == rec.key for r, _ in self.pending.get(rec.trace_id, ())):
                    plan.duplicates += 1
                else:
                    plan.pending.append(rec)
                seen_now.add(rec.key)
                continue
            self._plan_span(plan, rec, cid, seen_now)
        # spans that waited for their trace's call id
        for trace_id, cid in local_traces.items():
            for rec, _arrival in self.pending.get(trace_id, ()):
                plan.resolved_pending.append(rec)
                self._plan_span(plan, rec, cid, seen_now)
        batch.records = [r for recs in plan.by_call.values() for r in recs]
        self._batch_states = {}
        self._batch_sides = {}

    def _plan_span(self, plan: WritePlan, rec: SpanRecord, cid: str, seen_now: set[tuple[str, str]]) -> None:
        states = self._batch_states  # assign changes no state: one lookup (or WAL reload) per call per batch
        if cid in states:
            state = states[cid]
        else:
            state = states[cid] = self._state(cid)
        key = (rec.trace_id, rec.span_id)
        if key in seen_now:
            plan.duplicates += 1
            return
        packed = SeenKeys.pack(key)  # packed once: apply counts the span without searching the call's keys again
        if state is not None and state.seen.has_packed(key, packed):
            plan.duplicates += 1
            return
        seen_now.add(key)
        rec.call_id = cid
        rec.side = self._side_of(rec, cid, state)
        if cid not in plan.reldirs:
            if state is not None:
                plan.reldirs[cid] = state.reldir
                if state.final:
                    plan.index.append({"id": cid, "open": True, "revision": state.revision + 1})
            else:
                reldir = relative_call_dir(cid, rec.start_ns or int(self.clock() * 1e9))
                plan.reldirs[cid] = reldir
                plan.index.append({"id": cid, "dir": reldir, "open": True, "revision": 1})
        recs = plan.by_call.get(cid)
        if recs is None:
            recs = plan.by_call[cid] = []
            plan.packed[cid] = []
        recs.append(rec)
        plan.packed[cid].append(packed)

    # -- phase 2: apply (after the store made the plan durable) -------------------------------
    def apply(self, batch: TraceBatch) -> None:
        plan: WritePlan = batch.plan
        now = batch.arrival or self.clock()
        if plan.duplicates:
            self.metrics.spans_duplicate.inc(plan.duplicates)
        for entry in plan.index:
            self.index.setdefault(entry["id"], {"dir": None, "open": True, "revision": 1, "reason": None})
            self.index[entry["id"]].update(entry)
        for cid, recs in plan.by_call.items():
            state = self.calls.get(cid)  # assign() already reloaded an evicted call from its WAL
            if state is None:
                state = self.calls[cid] = CallState(cid, plan.reldirs[cid])
                state.last_write = now  # its first envelope ENVELOPE_DEBOUNCE_S from now (or when it is final)
            if state.final:
                self._reopen(state)
            self._touched.add(cid)
            # assign found these keys new and nothing ran in between but the WAL append: counted without a search
            state.add_planned(recs, plan.packed[cid], now)
            learn = self._learn_trace
            for trace_id in dict.fromkeys([rec.trace_id for rec in recs]):  # each trace once, in first-seen order
                learn(trace_id, cid)
        for rec in plan.resolved_pending:
            lst = self.pending.get(rec.trace_id)
            if lst:
                lst[:] = [(r, t) for r, t in lst if r.key != rec.key]
                if not lst:
                    del self.pending[rec.trace_id]
            self._pending_dirty = True
        for rec in plan.pending:
            self.pending.setdefault(rec.trace_id, []).append((rec, now))

    # -- finalization ---------------------------------------------------------------------------
    def request_finalize(self, call_id: str) -> bool:
        state = self._settled_state(call_id)
        if state is None:
            return False
        if call_id not in self.calls:
            self.calls[call_id] = state
        if not state.final:
            state.finalize_requested_at = self.clock()
            self._touched.add(call_id)
        return True

    def _deadline(self, state: CallState) -> tuple[float, str]:
        if state.finalize_requested_at is not None:
            return state.finalize_requested_at, "finalize_request"
        grace = self.cfg.rollup.final_grace
        idle = self.cfg.rollup.idle_timeout
        sides: dict[str, list[Any]] = {}
        declared: dict[str, set[str]] = {}
        for (inst, side) in state.groups:
            if side is not None:
                declared.setdefault(inst, set()).add(side)
        for (inst, side), g in state.groups.items():
            if side is None:
                opts = declared.get(inst, set())
                side = next(iter(opts)) if len(opts) == 1 else "uut"
            cur = sides.setdefault(side, [0.0, None, False])
            cur[0] = max(cur[0], g.last_arrival)
            if g.signal_at is not None:
                cur[1] = g.signal_at if cur[1] is None else min(cur[1], g.signal_at)
                cur[2] = cur[2] or g.root_ended
        sdk_end = None
        if state.sdk is not None:  # the SDK's own call reports speak for its side (uut under Patter.serve)
            cur = sides.setdefault("uut", [0.0, None, False])
            cur[0] = max(cur[0], state.sdk.last_arrival)
            sdk_end = state.sdk.end_at
            if sdk_end is not None:  # its call_end report is the definitive end: final after the grace
                cur[1] = sdk_end if cur[1] is None else min(cur[1], sdk_end)
        best = (0.0, "idle_timeout")
        for side, (last, signal, root) in sides.items():
            if signal is not None:
                reason = "root_span_end" if root else "hangup_usage"
                if side == "uut" and sdk_end is not None:
                    reason = "sdk_call_end"
                d = (max(last, signal) + grace, reason)
            else:
                d = (last + idle, "idle_timeout")
            best = max(best, d)
        return best

    def tick(self, budget_s: float | None = None) -> bool:
        """Finalize the calls whose deadline passed (looking only at those, and at calls touched since the last
        tick), evict final calls after EVICT_AFTER_S, write debounced envelopes, expire pending spans.

        With `budget_s`, stop finalizing and writing once that much time went (the server's ticker then lets
        requests in and calls again), so a burst of calls ending never stalls ingest; False when work is left."""
        now = self.clock()
        stop_at = None if budget_s is None else time.perf_counter() + budget_s
        # before anything is finalized: a replayed call's spans that waited in pending (none is finalized while
        # they cannot be written)
        hold = bool(self._traces_to_resolve) and not self._resolve_replayed_traces()
        new_tick = self._tick_done  # not the next slice of a tick that ran out of budget
        if new_tick and self._retry_next_tick:  # failed finalizations: again at the next tick, not the next slice
            self._touched |= self._retry_next_tick
            self._retry_next_tick.clear()
        heap = self._deadlines
        touched = self._touched
        judged = 0
        while touched:  # one live heap entry per call: a touch pushes only when its deadline moved
            if judged >= TOUCHED_SLICE_MIN and stop_at is not None and time.perf_counter() >= stop_at:
                break  # the rest at the next slice; finalizing waits for them (their deadlines may have moved)
            judged += 1
            cid = touched.pop()
            state = self.calls.get(cid)
            if state is None:
                continue
            if not state.final:
                deadline = self._deadline(state)[0]
                if deadline != state.due_at:
                    state.due_at = deadline
                    heapq.heappush(heap, (deadline, cid))
            if state.dirty and not state.write_queued:
                state.write_queued = True
                heapq.heappush(self._envelopes_due, (_envelope_due_at(state), cid))
        if len(heap) > HEAP_SLACK + 2 * len(self.calls):  # calls touched in many ticks left stale entries behind
            heap[:] = [(at, cid) for at, cid in heap if (st := self.calls.get(cid)) is not None and at == st.due_at]
            heapq.heapify(heap)
        # pop, judge and finalize one call at a time, in deadline order, until the budget is spent: a backlog of
        # due calls stays in the heap untouched (collecting every due call first and pushing back those the budget
        # left made each slice re-judge the whole backlog: 10k due calls took ~26 ms a slice before the first
        # was finalized, so finalizing fell behind further and the ticker held the loop ever longer)
        done = not touched
        finalized = 0
        while heap and heap[0][0] <= now and not hold and not touched:  # deadlines first: finalized in their order
            if finalized and stop_at is not None and time.perf_counter() >= stop_at:
                done = False  # the rest is still due: the next slice (at least one call a slice, so it progresses)
                break
            at, cid = heapq.heappop(heap)
            state = self.calls.get(cid)
            if state is None or state.final or at != state.due_at:
                continue  # gone, final, or an entry its deadline has moved away from
            deadline, reason = self._deadline(state)
            if now < deadline:
                state.due_at = deadline
                heapq.heappush(heap, (deadline, cid))
                continue
            state.due_at = None  # no live entry now: a failed finalization's retry or a reopen pushes again
            self._finalize(state, reason, now)
            finalized += 1
            if not state.final:  # the store failed: try again at the next tick (not the next slice)
                self._retry_next_tick.add(cid)
        if now >= self._evict_at and not self._evict_scan:
            self._evict_at = now + EVICT_SWEEP_S
            self._evict_scan = list(self.calls)
        if self._evict_scan:
            self._evict_some(now)
        if done:
            done = self.flush_envelopes(stop_at=stop_at)
        if new_tick:  # O(pending spans): once a tick, not at the end of every 5 ms slice
            self._expire_pending(now)
        self._tick_done = done
        return done

    def _evict_some(self, now: float) -> None:
        """The next EVICT_SLICE calls of the sweep: those final for EVICT_AFTER_S leave memory (a late span or a
        query reads them back from their WAL)."""
        scan = self._evict_scan
        calls = self.calls
        for cid in scan[-EVICT_SLICE:]:
            state = calls.get(cid)
            if state is not None and state.final and state.final_at is not None \
                    and now - state.final_at > EVICT_AFTER_S and not state.dirty:
                del calls[cid]
        del scan[-EVICT_SLICE:]

    def _finalize(self, state: CallState, reason: str, now: float) -> None:
        requested_at = state.finalize_requested_at
        state.final = True
        state.final_reason = reason
        state.final_at = now
        state.finalize_requested_at = None
        try:
            envelope = self.envelope(state)
            if self._before_done.get(state.call_id) != state.revision:  # not again on a finalize retry
                self._run_hooks(self.before_final, state, envelope, durable=True)
                self._before_done[state.call_id] = state.revision
            # first: a call final in the index has its traces on disk, those the map gives it (a trace two calls
            # share goes to the one that learned it first, as it does without a restart)
            cid = state.call_id
            trace_ids = [t for t in state.seen.trace_ids() if self._trace_call(t) == cid]
            if trace_ids:
                self.store.append_final_traces(cid, trace_ids)
            self.store.append_index([{"id": state.call_id, "open": False, "revision": state.revision,
                                      "reason": reason}])
            self._write(state, envelope)
        except OSError as e:  # StoreError, or any OSError a store call lets through: never left final half-way
            self.metrics.store_errors.labels("finalize").inc()
            log.warning("finalize of a call failed; will retry: %s", e.strerror, extra={"call_id": state.call_id})
            state.final = False
            state.final_reason = None
            state.final_at = None
            state.finalize_requested_at = requested_at  # still asked for: the next tick tries again
            return
        self._before_done.pop(state.call_id, None)
        self.index.setdefault(state.call_id, {"dir": state.reldir}).update(
            {"open": False, "revision": state.revision, "reason": reason})
        self._child(self.metrics.calls_finalized, reason).inc()
        if log.isEnabledFor(logging.INFO):  # not even the `extra` dict when the level is above info
            log.info("call final", extra={"call_id": state.call_id, "revision": state.revision, "reason": reason,
                                          "status": envelope.get("status")})
        self._run_hooks(self.on_final, state, envelope)
        for fut in self._waiters.pop(state.call_id, []):
            if not fut.done():
                fut.set_result(None)

    def _reopen(self, state: CallState) -> None:
        """A final call takes a late span or report: its next revision starts."""
        for hook in self.on_reopen:
            try:
                hook(state, lambda: self.envelope(state))
            except Exception:  # an output's bug must not stop ingest
                log.exception("reopen hook failed", extra={"call_id": state.call_id})
        state.final = False
        state.final_reason = None
        state.revision += 1

    @staticmethod
    def _run_hooks(hooks: list[Callable[[CallState, dict[str, Any]], None]], state: CallState,
                   envelope: dict[str, Any], durable: bool = False) -> None:
        """`durable`: a StoreError fails the finalization (it is retried); otherwise nothing a hook raises does."""
        for hook in hooks:
            try:
                hook(state, envelope)
            except Exception as e:  # an output's bug must not stop finalization (waiters, other hooks)
                if durable and isinstance(e, StoreError):
                    raise
                log.exception("finalization hook failed", extra={"call_id": state.call_id})

    def envelope(self, state: CallState) -> dict[str, Any]:
        return build_envelope(state, self.book, self.defaults)

    def _write(self, state: CallState, env: dict[str, Any] | None = None) -> dict[str, Any]:
        if env is None:
            env = self.envelope(state)
        self.store.write_envelope(state.reldir, env)
        self.metrics.envelope_writes.inc()
        state.dirty = False
        state.last_write = self.clock()
        state.write_queued = False  # a queued entry was keyed on the previous write: stale now
        return env

    def flush_envelopes(self, force: bool = False, stop_at: float | None = None) -> bool:
        """Write the envelopes of changed calls, each at most every ENVELOPE_DEBOUNCE_S (a new call's first one
        ENVELOPE_DEBOUNCE_S after it opened); `force` writes all now. False when `stop_at` (perf_counter) cut
        it short."""
        if force:
            for state in self.calls.values():
                if state.dirty and not self._write_counted(state):
                    return True
            return True
        now = self.clock()
        heap = self._envelopes_due
        written = 0
        while heap and heap[0][0] <= now:
            if written and stop_at is not None and time.perf_counter() >= stop_at:
                return False  # at least one write a slice, like finalizing: a spent budget still progresses
            at, cid = heapq.heappop(heap)
            state = self.calls.get(cid)
            if state is None or not state.write_queued or at != _envelope_due_at(state):
                continue  # evicted, or written since (a finalization): the next change queues it again
            state.write_queued = False
            if state.dirty:
                if not self._write_counted(state):
                    state.write_queued = True
                    heapq.heappush(heap, (at, cid))  # the next tick tries again
                    return True
                written += 1
        return True

    def _write_counted(self, state: CallState) -> bool:
        """`_write`, with a store failure counted instead of raised (False): the caller stops for this tick."""
        try:
            self._write(state)
        except OSError:  # StoreError, or any OSError a store call lets through
            self.metrics.store_errors.labels("envelope").inc()
            return False
        return True

    # -- the SDK's own call reports (receivers/sdk_ingest) ----------------------------------------
    def record_sdk_report(self, report: dict[str, Any]) -> bool:
        """Fold one sanitized SDK report (processors/sdk_report) into its call, opening the call if it is new
        and reopening it if it was final. Durable first: the report is a line of the call's WAL (type
        `sdk_report`) before it counts. False for a repeat of a kind the call already has; raises StoreError."""
        cid = report["call_id"]
        state = self._settled_state(cid)
        if state is not None and state.sdk is not None and report["kind"] in state.sdk.reports:
            return False
        entry: dict[str, Any] | None = None
        if state is None:
            reldir = relative_call_dir(cid, int(report_start(report) * 1e9))
            entry = {"id": cid, "dir": reldir, "open": True, "revision": 1}
        else:
            reldir = state.reldir
            if state.final:
                entry = {"id": cid, "open": True, "revision": state.revision + 1}
        if entry is not None:
            self.store.append_index([entry])
        self.store.append_wal(reldir, [sdk_wal_line(report)])
        if entry is not None:
            self.index.setdefault(cid, {"dir": None, "open": True, "revision": 1, "reason": None}).update(entry)
        if state is None:
            state = self.calls[cid] = CallState(cid, reldir)
        elif state.final:
            self._reopen(state)
        self.calls.setdefault(cid, state)
        apply_report(state, report, self.cfg.sdk_ingest.tolerance_usd)
        self._touched.add(cid)  # its deadline may have moved (tick)
        return True

    def _expire_pending(self, now: float) -> None:
        limit = self.cfg.rollup.pending_timeout
        # while open calls are still on disk a pending span may belong to one: none expires before they are back
        # (a call left on disk after RECOVER_ATTEMPTS does not hold expiry: pending stays bounded)
        for trace_id in list(self.pending) if not self.recovering else ():
            kept = [(r, t) for r, t in self.pending[trace_id] if now - t < limit]
            expired = len(self.pending[trace_id]) - len(kept)
            if expired:
                self.metrics.spans_unattributed.labels("no_call_id").inc(expired)
                self._pending_dirty = True
            if kept:
                self.pending[trace_id] = kept
            else:
                del self.pending[trace_id]
        if self._pending_dirty:
            encoded, kept, lines = self._pending_lines, {}, []
            for lst in self.pending.values():
                for r, t in lst:
                    key = (r.trace_id, r.span_id)
                    hit = encoded.get(key)  # reused only for the same entry (a moved arrival or a duplicate: again)
                    line = hit[2] if hit is not None and hit[0] is r and hit[1] == t else self._pending_line(r, t)
                    kept[key] = (r, t, line)
                    lines.append(line)  # one line per pending entry, as before
            self._pending_lines = kept
            try:
                self.store.rewrite_pending(lines)
                self._pending_dirty = False
            except StoreError:
                self.metrics.store_errors.labels("pending").inc()

    @staticmethod
    def _pending_line(rec: SpanRecord, arrival: float) -> str:
        return EnvelopeStore.wal_line(rec.to_json(), None, arrival)

    async def wait_final(self, call_id: str, timeout: float) -> bool:
        state = self._settled_state(call_id)
        if state is not None and state.final:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(call_id, []).append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            lst = self._waiters.get(call_id)
            if lst and fut in lst:
                lst.remove(fut)

    # -- recovery -------------------------------------------------------------------------------
    def _load(self, call_id: str, entry: dict[str, Any], waiting: set[str] | None = None) -> CallState | None:
        """Replay a call's WAL. `waiting` collects the traces it learns that have spans in pending."""
        state = CallState(call_id, entry["dir"], revision=int(entry.get("revision") or 1))
        arrivals: dict[Any, float] = {}
        learn = self._learn_trace
        pending = self.pending
        watch = waiting if pending else None  # traces to note only while something waits in pending
        for line in self.store.read_wal(entry["dir"]):
            data = line.get("data")
            if line.get("type") == SDK_REPORT and isinstance(data, dict) and data.get("call_id") == call_id:
                replay_report(state, data, self.cfg.sdk_ingest.tolerance_usd)
                continue
            if line.get("type") != "span" or not isinstance(data, dict):
                continue
            try:
                rec = SpanRecord.from_json(data)
                ts = line["ts"]
                arrival = arrivals.get(ts)  # the lines of one request share their arrival time
                if arrival is None:
                    arrival = arrivals[ts] = parse_iso(ts)
            except (KeyError, TypeError, ValueError):
                continue
            if state.add(rec, arrival):  # a repeat (the client retried) adds nothing
                learn(rec.trace_id, call_id)
                if watch is not None and rec.trace_id in pending:
                    watch.add(rec.trace_id)
        if not state.seen and state.sdk is None:
            return None
        if not entry.get("open", True):
            state.final = True
            state.final_reason = entry.get("reason")
            state.final_at = self.clock()
        state.dirty = False
        self.calls[call_id] = state
        return state

    def begin_recovery(self) -> None:
        """Read the index and the pending log; open calls are replayed later (`recover_step`, or on demand)."""
        self.index = self.store.read_index()
        self._unloaded = {cid: None for cid, entry in self.index.items() if entry.get("open", True)}
        self.store.compact_index(self.index)
        learn = self._learn_trace  # the traces of final calls, as an uninterrupted run still knows them
        for cid, trace_ids in self.store.read_final_traces():
            entry = self.index.get(cid)
            if entry is not None and not entry.get("open", True):  # an open call learns its own when replayed
                for trace_id in trace_ids:
                    learn(trace_id, cid)
        now = self.clock()
        for line in self.store.read_pending():
            try:
                rec = SpanRecord.from_json(line["data"])
            except (KeyError, TypeError, ValueError):
                continue
            self.pending.setdefault(rec.trace_id, []).append((rec, now))
            self._pending_dirty = True
        # spans that waited for a trace a final call knows: counted before the next query (not only once every
        # open call is back), so an answer during recovery is the one after it
        self._traces_to_resolve.update(t for t in self.pending if self._trace_call(t) is not None)
        self.recovering = True

    def recover_step(self, budget_s: float | None = None) -> bool:
        """Replay open calls for at most `budget_s` (all with None); True once every call is back (or left on disk
        after RECOVER_ATTEMPTS) and the pending spans their traces resolve are counted. Raises StoreError when
        writing those fails."""
        stop_at = None if budget_s is None else time.perf_counter() + budget_s
        unloaded = self._unloaded
        while unloaded:
            if stop_at is not None and time.perf_counter() >= stop_at:
                return False
            cid = next(iter(unloaded))
            try:
                self._recover_call(cid)
            except Exception:  # one unreadable call must not stop the others: it is tried again later
                del unloaded[cid]
                self._replay_failed(cid, 0)
        now = time.monotonic()
        for cid, (attempts, at) in list(self._replay_retry.items()):
            if at <= now:
                try:
                    self._recover_call(cid)
                except Exception:
                    self._replay_failed(cid, attempts)
        if self._replay_retry:
            return False
        if self.recovering:
            self._resolve_pending()
            self._end_recovery()
        return True

    def _replay_failed(self, call_id: str, attempts: int) -> None:
        attempts += 1
        if attempts < RECOVER_ATTEMPTS:
            self._replay_retry[call_id] = (attempts, time.monotonic() + RECOVER_RETRY_S)
            log.warning("replay of an open call failed; will retry", exc_info=True, extra={"call_id": call_id})
        else:
            self._replay_retry.pop(call_id, None)
            self._left_on_disk.add(call_id)
            log.error("replay of an open call failed %d times; left on disk until a request names it", attempts,
                      exc_info=True, extra={"call_id": call_id})

    def _end_recovery(self) -> None:
        now = self.clock()
        for lst in self.pending.values():  # what still waits gets a full pending_timeout from now
            lst[:] = [(rec, max(t, now)) for rec, t in lst]
        self.recovering = False
        log.info("recovered open calls", extra={"calls": self.open_calls()})

    def recover(self) -> None:
        """Rebuild open calls and pending spans from disk at once: results equal an uninterrupted run."""
        self.begin_recovery()
        while not self.recover_step():  # only a call whose replay failed is left: try it again shortly
            time.sleep(RECOVER_RETRY_S / 4)

    async def _recover_in_background(self) -> None:
        while True:
            try:
                if self.recover_step(RECOVER_SLICE_S):
                    return
            except StoreError as e:
                self.metrics.store_errors.labels("recover").inc()
                log.warning("recovery could not write resolved pending spans; will retry: %s", e.strerror)
                await asyncio.sleep(RECOVER_RETRY_S)
            except Exception:  # the pending pass failed otherwise: the calls are back, recovery is over
                log.exception("recovery could not count the pending spans of replayed calls")
                self._end_recovery()
                return
            # requests in between: ingest goes on while calls load (and a failed replay waits for its retry)
            await asyncio.sleep(0 if self._unloaded else RECOVER_RETRY_S / 4)

    def _recover_call(self, call_id: str) -> CallState | None:
        """Replay one open call of the index (restart recovery) and give it a full idle window again."""
        state = self._load(call_id, self.index[call_id], self._traces_to_resolve)
        # after the replay: a call that fails to replay stays open on disk
        self._unloaded.pop(call_id, None)
        self._replay_retry.pop(call_id, None)
        self._left_on_disk.discard(call_id)
        if state is not None:
            now = self.clock()
            for g in state.groups.values():  # a restart is not silence
                g.last_arrival = max(g.last_arrival, now)
            if state.sdk is not None:
                state.sdk.last_arrival = max(state.sdk.last_arrival, now)
            state.dirty = True
            state.last_write = now  # its envelope is rewritten debounced, like any open call's: a restart with
            self._touched.add(call_id)  # 10k open calls does not write 10k files while it replays them
        return state

    def _resolve_replayed_traces(self) -> bool:
        """Count the pending spans of the traces replayed calls learned; False (kept for later) on a store error."""
        traces, self._traces_to_resolve = self._traces_to_resolve, set()
        try:
            self._resolve_pending(traces)
        except StoreError as e:
            self.metrics.store_errors.labels("recover").inc()
            log.warning("could not write pending spans of a replayed call; will retry: %s", e.strerror)
            self._traces_to_resolve |= traces
            return False
        except Exception:  # a bug: the spans stay pending (the end of recovery tries again), nothing is held
            log.exception("could not count pending spans of a replayed call")
        return True

    def _resolve_pending(self, traces: set[str] | None = None) -> None:
        """Count the pending spans (of `traces`, or all) whose trace a replayed call knows: they waited in the
        pending log over the restart, or arrived while their call was still on disk."""
        candidates = self.pending if traces is None else [t for t in traces if t in self.pending]
        known = []
        for tid in candidates:
            cid = self._trace_call(tid)
            if cid is not None and not self._not_replayed(cid):  # (a call that failed to replay counts them later)
                known.append(tid)
        if not known:
            return
        now = self.clock()
        batch = TraceBatch(request=None, arrival=now)  # type: ignore[arg-type]
        batch.records = [rec for tid in known for rec, _arrival in self.pending[tid]]
        self.assign(batch)
        write_plan(self.store, batch.plan, now)  # durable first, then counted (raises StoreError)
        for tid in known:
            del self.pending[tid]
        self._pending_dirty = True
        self.apply(batch)

    # -- queries ---------------------------------------------------------------------------------
    def get(self, call_id: str) -> dict[str, Any] | None:
        state = self._settled_state(call_id)
        if state is None:
            return None
        return self.envelope(state)

    def iter_calls(self) -> Iterator[dict[str, Any]]:
        """Every call's envelope (built for calls in memory or not replayed yet, read from disk for evicted ones),
        one at a time, so
        a caller on the event loop can let requests in between (10k open calls take seconds to build)."""
        for cid, entry in list(self.index.items()):
            state = self.calls.get(cid)
            if state is None and self._not_replayed(cid):
                state = self._settled_state(cid)
            elif self._traces_to_resolve:  # calls replayed in the background since the last tick
                self._resolve_replayed_traces()
            if state is not None:
                yield self.envelope(state)
            elif entry.get("dir"):
                env = self.store.read_envelope(entry["dir"])
                if env is not None:
                    yield env
