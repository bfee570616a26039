"""kill -9 between requests loses nothing acknowledged and counts nothing twice."""

from __future__ import annotations

from pathlib import Path

from tests.otlp import RECORDED_CALL_ID, post, recorded_call
from tests.server import ServerProc


def _send(server: ServerProc, reqs: list) -> None:
    for req in reqs:
        code, body, _ = post(server.http_endpoint + "/v1/traces", req.SerializeToString())
        assert code == 200, body


def test_kill9_between_requests_then_more_spans_equals_an_uninterrupted_run(make_server, tmp_path: Path) -> None:
    batches = recorded_call()
    (tmp_path / "ref").mkdir()
    reference = make_server(root=tmp_path / "ref").start()
    _send(reference, batches)
    expected = reference.wait_final(RECORDED_CALL_ID)

    (tmp_path / "crash").mkdir()
    s = make_server(root=tmp_path / "crash").start()
    _send(s, batches[:2])
    s.kill9()
    s.start()
    _send(s, batches[1:])  # the client retries the last acknowledged request, then goes on
    got = s.wait_final(RECORDED_CALL_ID)
    assert got == expected
    assert len((s.envelope_files()[0].parent / "spans.jsonl").read_text().splitlines()) == 37


def test_restart_after_final_keeps_dedupe_state(make_server, tmp_path: Path) -> None:
    s = make_server().start()
    batches = recorded_call()
    _send(s, batches)
    first = s.wait_final(RECORDED_CALL_ID)
    s.kill9()
    s.start()
    _send(s, batches)  # every request retried after the restart
    code, again = s.get(f"/api/v1/calls/{RECORDED_CALL_ID}")
    assert code == 200
    assert again["cost"] == first["cost"]
    assert again["counts"] == first["counts"]
    assert again["revision"] == first["revision"]


def test_late_span_reopens_the_call_and_bumps_revision(make_server) -> None:
    from tests.otlp import request, span

    s = make_server().start()
    _send(s, recorded_call())
    first = s.wait_final(RECORDED_CALL_ID)
    late = request([span("patter.billable", {"patter.cost.tts_chars": 100, "patter.tts.provider": "elevenlabs",
                                             "patter.call_id": RECORDED_CALL_ID, "patter.side": "uut"})])
    _send(s, [late])
    s.post(f"/api/v1/calls/{RECORDED_CALL_ID}/finalize")
    second = s.wait_final(RECORDED_CALL_ID)
    assert second["revision"] == first["revision"] + 1
    assert second["usage"]["tts"][0]["chars"] == first["usage"]["tts"][0]["chars"] + 100
    assert second["counts"]["spans"] == first["counts"]["spans"] + 1


def test_a_restarted_server_is_ready_and_lists_its_open_calls_with_every_span_once_they_are_replayed(
        make_server) -> None:
    import time

    s = make_server(config={"rollup": {"idle_timeout": "1h"}}).start()
    for i in range(3):
        _send(s, recorded_call(f"{RECORDED_CALL_ID}-{i}", id_salt=bytes([i]))[:3])
    s.kill9()
    s.start()
    code, ready = s.get("/readyz")
    assert code == 200 and ready["ready"] is True
    deadline = time.monotonic() + 20
    while "recovery" in ready["checks"] and time.monotonic() < deadline:
        time.sleep(0.05)
        _, ready = s.get("/readyz")
    assert ready["checks"]["rollup"] == "ok" and "recovery" not in ready["checks"]
    code, listed = s.get("/api/v1/calls?status=in_progress")
    assert sorted(c["call_id"] for c in listed["calls"]) == [f"{RECORDED_CALL_ID}-{i}" for i in range(3)]
    assert [c["counts"]["spans"] for c in listed["calls"]] == [27, 27, 27]


def test_a_call_whose_wal_cannot_be_read_after_a_restart_answers_503_with_retry_after(make_server) -> None:
    s = make_server(config={"rollup": {"idle_timeout": "1h"}}).start()
    _send(s, recorded_call()[:3])
    s.kill9()
    wal = next(s.log_dir.glob("calls/*/*/*/*/spans.jsonl"))
    wal.rename(wal.with_name("spans.jsonl.moved"))
    wal.mkdir()  # reading it now fails with IsADirectoryError
    s.start()
    code, body = s.get(f"/api/v1/calls/{RECORDED_CALL_ID}")
    assert code == 503
    assert body == {"error": "call state unavailable: Is a directory"}
    code, _, headers = post(s.http_endpoint + "/v1/traces", recorded_call()[3].SerializeToString())
    assert (code, headers.get("Retry-After")) == (503, "1")
