"""Behaviour that the real service does not show on demand (429/503, odd
bodies, SSE edge cases), with httpx's MockTransport."""

from __future__ import annotations

import asyncio
import json
from datetime import timezone
from typing import Any, Callable, Dict, List

import httpx
import pytest

from editthinker import AsyncClient, Client, EditThinkerError, Event
from editthinker._core import SSEDecoder
from editthinker._models import parse_datetime

JOB: Dict[str, Any] = {
    "id": "j1",
    "status": "queued",
    "instruction": "x",
    "editor": "sandbox",
    "sandbox": True,
    "options": {"max_turns": 5, "stop": {"semantic": 8.0, "quality": 8.0}, "selection": "best"},
    "turns": [],
    "attempt": 0,
    "priority": 0,
    "metadata": {},
    "created_at": "2026-12-07T06:55:49.761710123Z",
    "some_future_field": 1,
}


def busy(status: int = 503, retry_after: str = "0") -> httpx.Response:
    problem = {"type": "t", "title": "Busy", "status": status, "detail": "later", "code": "rate_limited"}
    return httpx.Response(status, json=problem, headers={"Retry-After": retry_after})


def mock(answers: List[httpx.Response], seen: List[httpx.Request]) -> Callable[[httpx.Request], httpx.Response]:
    def handle(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        return answers.pop(0)

    return handle


def test_get_retries_429_and_503_then_succeeds() -> None:
    seen: List[httpx.Request] = []
    answers = [busy(503), busy(429), httpx.Response(200, json=JOB)]
    with Client("http://x", transport=httpx.MockTransport(mock(answers, seen))) as c:
        job = c.get("j1")
    assert job.id == "j1" and len(seen) == 3
    assert job.created_at.tzinfo == timezone.utc and job.raw["some_future_field"] == 1


def test_attempts_are_bounded_and_retry_after_is_capped() -> None:
    seen: List[httpx.Request] = []
    answers = [busy(retry_after="3600") for _ in range(5)]
    transport = httpx.MockTransport(mock(answers, seen))
    with Client("http://x", transport=transport, max_retry_wait=0.01) as c, pytest.raises(EditThinkerError) as e:
        c.get("j1")
    assert len(seen) == 3 and e.value.status == 503 and e.value.code == "rate_limited"
    assert e.value.retry_after == 3600


def test_create_retried_with_the_same_key_and_body() -> None:
    seen: List[httpx.Request] = []
    answers = [busy(429), httpx.Response(202, json=JOB)]
    with Client("http://x", transport=httpx.MockTransport(mock(answers, seen))) as c:
        created = c.create(b"\x89PNG fake", "x", options={"max_turns": 2}, wait=5)
    keys = [r.headers["Idempotency-Key"] for r in seen]
    bodies = [r.content.replace(r.headers["Content-Type"].split("boundary=")[1].encode(), b"") for r in seen]
    assert keys == [created.idempotency_key] * 2 and bodies[0] == bodies[1]
    assert seen[0].headers["Prefer"] == "wait=5"
    assert b'name="options"\r\n\r\n{"max_turns": 2}' in seen[0].content
    assert seen[0].headers["Content-Type"].startswith("multipart/form-data")


def test_create_by_url_is_json() -> None:
    seen: List[httpx.Request] = []
    with Client("http://x", transport=httpx.MockTransport(mock([httpx.Response(202, json=JOB)], seen))) as c:
        c.create("https://example.com/a.png", "x", webhook={"url": "https://h.example/hook"}, priority=-2)
    assert json.loads(seen[0].content) == {
        "image": {"url": "https://example.com/a.png"},
        "instruction": "x",
        "priority": -2,
        "webhook": {"url": "https://h.example/hook"},
    }


def test_retry_endpoint_is_not_retried() -> None:
    seen: List[httpx.Request] = []
    with Client("http://x", transport=httpx.MockTransport(mock([busy(503), busy(503)], seen))) as c:
        with pytest.raises(EditThinkerError):
            c.retry("j1")
    assert len(seen) == 1


def test_non_problem_error_body() -> None:
    seen: List[httpx.Request] = []
    answers = [httpx.Response(502, text="<html>Bad Gateway</html>")]
    with Client("http://x", transport=httpx.MockTransport(mock(answers, seen))) as c:
        with pytest.raises(EditThinkerError) as e:
            c.get("j1")
    assert e.value.status == 502 and e.value.code is None and "Bad Gateway" in e.value.detail


def test_api_key_and_headers_are_sent() -> None:
    seen: List[httpx.Request] = []
    transport = httpx.MockTransport(mock([httpx.Response(200, json=JOB)], seen))
    with Client("http://x", api_key="et_abc", headers={"X-Trace": "1"}, transport=transport) as c:
        c.get("j1")
    assert seen[0].headers["Authorization"] == "Bearer et_abc" and seen[0].headers["X-Trace"] == "1"


def sse(text: str) -> httpx.Response:
    return httpx.Response(200, content=text.encode(), headers={"Content-Type": "text/event-stream"})


def stream_answers() -> List[httpx.Response]:
    return [
        busy(503),
        # Cut inside event 5, before the terminal event: reconnect after id 4.
        sse(
            'id: 4\nevent: job.started\ndata: {"attempt":1}\n\n'
            'event: turn.thinking\ndata: {"delta":"a"}\n\nid: 5\nevent: turn.ed'
        ),
        # A retried job: job.queued follows job.failed, so the stream goes on
        # (and this connection drops before the end: reconnect after 7).
        sse(
            'id: 5\nevent: turn.edited\ndata: {"turn":1}\n\n: keep-alive\n\n'
            'id: 6\nevent: job.failed\ndata: {"code":"c"}\n\nid: 7\nevent: job.queued\ndata: {}\n\n'
        ),
        sse("id: 8\nevent: job.succeeded\ndata: {}\n\n"),
    ]


def check_stream(events: List[Event], seen: List[httpx.Request]) -> None:
    assert [(e.id, e.type) for e in events] == [
        (4, "job.started"),
        (None, "turn.thinking"),
        (5, "turn.edited"),
        (6, "job.failed"),
        (7, "job.queued"),
        (8, "job.succeeded"),
    ]
    assert [r.headers.get("Last-Event-ID") for r in seen] == ["3", "3", "4", "7"]


def test_stream_reconnects_with_last_event_id() -> None:
    seen: List[httpx.Request] = []
    with Client("http://x", transport=httpx.MockTransport(mock(stream_answers(), seen))) as c:
        check_stream(list(c.stream("j1", after=3)), seen)


def test_async_stream_reconnects_with_last_event_id() -> None:
    seen: List[httpx.Request] = []

    async def main() -> List[Event]:
        async with AsyncClient("http://x", transport=httpx.MockTransport(mock(stream_answers(), seen))) as c:
            return [e async for e in c.stream("j1", after=3)]

    check_stream(asyncio.run(main()), seen)


def test_stream_stops_on_204_and_raises_on_404() -> None:
    seen: List[httpx.Request] = []
    not_found = httpx.Response(
        404, json={"type": "t", "title": "Not found", "status": 404, "detail": "d", "code": "not_found"}
    )
    with Client("http://x", transport=httpx.MockTransport(mock([httpx.Response(204), not_found], seen))) as c:
        assert list(c.stream("j1", after=9)) == []
        with pytest.raises(EditThinkerError) as e:
            list(c.stream("j1"))
    assert e.value.code == "not_found"


def test_sse_decoder_line_endings_bom_and_split_chunks() -> None:
    raw = '\ufeffid: 1\r\nevent: a\r\ndata: {"x": "\u2028"}\r\n\r\n:c\rdata: {"y":\rdata: 2}\r\r\n'.encode()
    whole = SSEDecoder().feed(raw)
    decoder = SSEDecoder()
    pieces = [e for i in range(len(raw)) for e in decoder.feed(raw[i : i + 1])]
    assert whole == pieces == [Event(1, "a", {"x": "\u2028"}), Event(None, "message", {"y": 2})]


def test_parse_datetime_variants() -> None:
    assert parse_datetime("2025-12-10T09:14:03Z") is not None
    assert parse_datetime("2025-12-10T09:14:03.5+02:00").microsecond == 500000  # type: ignore[union-attr]
    assert parse_datetime("2025-12-10T09:14:03.123456789Z").microsecond == 123456  # type: ignore[union-attr]
