"""getpatter 0.7.0 `notify_dashboard` payloads, shaped exactly as the SDK sends them (captured from
tests/sdk_ingest/emit_call_notify.py against a stub on :8000), with personal data to plant."""

from __future__ import annotations

import copy
import time
from html.parser import HTMLParser
from typing import Any

CALL = "CA0123456789abcdef0123456789abcdef"
CALLER, CALLEE = "+15551234567", "+15557654321"
SECRET_WORD = "quokkafandango"
SECRET_PHONE = "+44 20 7946 0958"
SECRET_EMAIL = "someone.secret@example.org"
SECRET_TEXT = f"my number is {SECRET_PHONE}, mail {SECRET_EMAIL}, the word is {SECRET_WORD}"
COST = {"stt": 0.00112, "tts": 0.01305, "llm": 0.00022, "telephony": 0.0085, "total": 0.02289,
        "llm_cached_savings": 0.0}
_LATENCY = {"stt_ms": 0.0, "llm_ms": 74.0, "tts_ms": 3.3, "total_ms": 94.5, "user_speech_duration_ms": 1.4,
            "llm_ttft_ms": 74.0, "llm_total_ms": 88.4, "endpoint_ms": 0.2, "bargein_ms": 0.6,
            "tts_total_ms": 15.2, "agent_response_ms": 77.5}


def call_start(call_id: str = CALL, **extra: Any) -> dict[str, Any]:
    """twilio_stream_bridge's on_call_start data, as EmbeddedServer forwards it."""
    return {"call_id": call_id, "caller": CALLER, "callee": CALLEE, "direction": "inbound",
            "custom_params": {"caller": CALLER, "callee": CALLEE, "note": SECRET_TEXT},
            "telephony_provider": "twilio", **extra}


def initiated(call_id: str = CALL) -> dict[str, Any]:
    """Patter.call()'s pre-registration of an outbound dial."""
    return {"call_id": call_id, "caller": CALLEE, "callee": CALLER, "direction": "outbound", "status": "initiated"}


def _turn(i: int, user: str, agent: str) -> dict[str, Any]:
    return {"turn_index": i, "user_text": user, "agent_text": agent, "latency": dict(_LATENCY),
            "stt_audio_seconds": 0.0, "tts_characters": len(agent), "timestamp": time.time()}


def call_end(call_id: str = CALL, *, cost: dict[str, float] | None = None, duration_seconds: float = 15.43,
             ended_at: float | None = None, turns: int = 4, llm_model: str = "gpt-4o-mini",
             llm_provider: str = "openai", provider_mode: str = "pipeline", error_code: str = "",
             direction: str = "inbound", text: str = SECRET_TEXT, **metrics_extra: Any) -> dict[str, Any]:
    """The bridge's on_call_end payload: `metrics` is `asdict(CallMetrics)`, texts everywhere."""
    ended = time.time() if ended_at is None else ended_at
    history = [{"role": "user", "text": f"turn {i}: {text}", "timestamp": ended - 10 + i} for i in range(turns)]
    history.insert(1, {"role": "tool", "text": f'lookup_order({{"order_id": "42", "phone": "{SECRET_PHONE}"}})',
                       "timestamp": ended - 9})
    return {
        "call_id": call_id, "caller": CALLER, "callee": CALLEE, "ended_at": ended,
        "transcript": [{"role": h["role"], "text": h["text"]} for h in history],
        "conversation_history": history,
        "metrics": {
            "call_id": call_id, "duration_seconds": duration_seconds,
            "turns": [_turn(i, f"turn {i}: {text}", f"reply {i} to {SECRET_EMAIL}") for i in range(turns)],
            "cost": copy.deepcopy(COST if cost is None else cost),
            "latency_avg": dict(_LATENCY), "latency_p95": dict(_LATENCY, total_ms=685.7),
            "provider_mode": provider_mode, "stt_provider": "deepgram", "tts_provider": "elevenlabs",
            "llm_provider": llm_provider, "telephony_provider": "twilio", "stt_model": "nova-3", "tts_model": "",
            "llm_model": llm_model, "latency_p50": dict(_LATENCY), "latency_p90": dict(_LATENCY),
            "latency_p99": dict(_LATENCY, total_ms=758.6), "error_code": error_code, "preemptive_hits": 0,
            "preemptive_misses": 0, "context_tokens": 239, **metrics_extra,
        },
        "direction": direction,
        "recording_path": f"/var/recordings/{SECRET_WORD}.wav",
    }


SECRETS = [SECRET_WORD, SECRET_EMAIL, "someone.secret", "7946 0958", "79460958", "+44 20", CALLER[1:], CALLER[2:],
           CALLEE[1:], CALLEE[2:], "order_id", "lookup_order", "reply 0", "turn 0", "recordings", "custom_params"]


def leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s.lower() in text.lower()]


class _ReconciliationTable(HTMLParser):
    """The page's `<table id="reconciliation">`: {component: {"spans", "sdk", "diff", "pct", "causes"}}."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self._in_table = False
        self._row: str | None = None
        self._cell: str | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._in_table = a.get("id") == "reconciliation"
        elif self._in_table and tag == "tr":
            self._row = a.get("data-component")
        elif self._in_table and self._row and tag == "td" and a.get("class"):
            self._cell = (a["class"] or "").split()[-1]
            self._text = ""

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_table = False
        elif tag == "td" and self._cell is not None and self._row is not None:
            self.rows.setdefault(self._row, {})[self._cell] = self._text.strip()
            self._cell = None


def reconciliation_rows(page: str) -> dict[str, dict[str, str]]:
    parser = _ReconciliationTable()
    parser.feed(page)
    return parser.rows
