"""Decode OTLP request bodies once, for both transports, with the spec's refusals.

Refusals are exceptions carrying the gRPC code and HTTP status the OTLP spec assigns
(research/otel-anchors.md §7): malformed -> INVALID_ARGUMENT/400 (never retried), over
the size limit after decompression -> RESOURCE_EXHAUSTED/413 (so a gzip bomb is
refused without inflating it), not ready or store failing -> UNAVAILABLE/503 with a
retry delay (retried).
"""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

M = TypeVar("M", bound=Message)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})


class Refusal(Exception):
    """An OTLP request the server will not accept, with the spec's codes."""

    grpc_code = grpc.StatusCode.INTERNAL
    http_status = 500
    retry_after: float | None = None

    def __init__(self, message: str) -> None:
        # a message quoting the input may hold lone surrogates (from JSON escapes): protobuf strings cannot
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        super().__init__(message)
        self.message = message


class InvalidArgument(Refusal):
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400


class TooLarge(Refusal):
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 413


class UnsupportedMediaType(Refusal):
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 415


class Unavailable(Refusal):
    grpc_code = grpc.StatusCode.UNAVAILABLE
    http_status = 503

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unauthenticated(Refusal):
    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Inflate gzip/deflate without ever holding more than `limit` + 1 bytes."""
    enc = (encoding or "identity").strip().lower()
    if enc in ("", "identity"):
        if len(body) > limit:
            raise TooLarge(f"request body of {len(body)} bytes is over the {limit} byte limit")
        return body
    if enc not in ("gzip", "deflate"):
        raise UnsupportedMediaType(f"unsupported Content-Encoding {enc!r} (use gzip, deflate or identity)")
    wbits = 16 + zlib.MAX_WBITS if enc == "gzip" else zlib.MAX_WBITS
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise InvalidArgument(f"body is not valid {enc}: {e}") from e
    if len(out) > limit or d.unconsumed_tail:
        raise TooLarge(f"decompressed body is over the {limit} byte limit")
    if not d.eof:
        raise InvalidArgument(f"truncated {enc} body")
    return out


def _hex_ids_to_base64(obj: Any) -> Any:
    """OTLP/JSON carries ids as hex; protobuf's JSON mapping wants base64 for bytes."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k in _ID_KEYS and isinstance(v, str):
                try:
                    raw = bytes.fromhex(v)
                except ValueError as e:
                    raise InvalidArgument(f"{k} is not hex: {v[:40]!r}") from e
                out[k] = base64.b64encode(raw).decode()
            else:
                out[k] = _hex_ids_to_base64(v)
        return out
    if isinstance(obj, list):
        return [_hex_ids_to_base64(v) for v in obj]
    return obj


def parse(body: bytes, content_type: str, message_type: type[M]) -> M:
    msg = message_type()
    if content_type == PROTOBUF:
        try:
            msg.ParseFromString(body)
        except (DecodeError, RecursionError, ValueError) as e:
            raise InvalidArgument(f"malformed protobuf {message_type.__name__}: {e}") from e
        return msg
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise InvalidArgument(f"malformed JSON: {e}") from e
    if not isinstance(obj, dict):
        raise InvalidArgument("OTLP/JSON body must be an object")
    try:
        json_format.ParseDict(_hex_ids_to_base64(obj), msg, ignore_unknown_fields=True)
    except (json_format.ParseError, RecursionError, ValueError, TypeError, ArithmeticError, SystemError) as e:
        # found by fuzzing (tests/reliability/test_fuzz.py): OverflowError for `"intValue": Infinity`; SystemError
        # from upb's field lookup with a key holding a lone surrogate (`"\ud800"` is valid JSON, not UTF-8)
        raise InvalidArgument(f"invalid OTLP/JSON {message_type.__name__}: {str(e)[:300]}") from e
    return msg


_PARTIAL_FIELD = {"traces": "rejected_spans", "metrics": "rejected_data_points", "logs": "rejected_log_records"}


def partial_success_response(response_type: Any, signal: str, result: Any) -> Any:
    """An empty response on full success; `partial_success` only when something was dropped or warned."""
    resp = response_type()
    if result.rejected or result.message:
        setattr(resp.partial_success, _PARTIAL_FIELD[signal], result.rejected)
        resp.partial_success.error_message = result.message[:1000]
    return resp


def encode_response(msg: Message, content_type: str) -> bytes:
    if content_type == PROTOBUF:
        return msg.SerializeToString()
    return json.dumps(json_format.MessageToDict(msg)).encode()
