"""The blocking Client against the real service (sandbox providers)."""

from __future__ import annotations

import io
import time
import uuid
from pathlib import Path
from typing import Iterator, List

import httpx
import pytest

from editthinker import Budget, Client, EditThinkerError, EditThinkerTimeout, Event, Job, JobOptions, StopThresholds

from conftest import QUICK, CuttingProxy, Service, make_png

# Never satisfied, ten turns: runs ~17 s unless canceled.
LONG = {"max_turns": 10, "stop": {"semantic": 10, "quality": 10}}


@pytest.fixture
def client(service: Service) -> Iterator[Client]:
    with Client(service.base_url) as c:
        yield c


def stored_event_ids(base_url: str, job_id: str) -> List[int]:
    """The ids the service has stored for a finished job, read with plain
    httpx so that the check does not depend on the library's parser."""
    text = httpx.get(f"{base_url}/v1/jobs/{job_id}/events", timeout=30).text
    return [int(line[3:].strip()) for line in text.splitlines() if line.startswith("id:")]


def source_bytes(base_url: str, job_id: str) -> bytes:
    return httpx.get(f"{base_url}/v1/jobs/{job_id}/source").content


def test_create_by_bytes_path_file_and_url(
    client: Client, service: Service, png: bytes, image_url: str, tmp_path: Path
) -> None:
    by_bytes = client.create(png, "make the sky purple", options=QUICK, metadata={"k": "v"}, priority=3)
    assert by_bytes.job.status == "queued" and by_bytes.job.sandbox
    assert by_bytes.job.metadata == {"k": "v"} and by_bytes.job.priority == 3
    assert by_bytes.job.options.max_turns == 1
    assert not by_bytes.replayed and uuid.UUID(by_bytes.idempotency_key)
    assert source_bytes(service.base_url, by_bytes.job.id) == png

    path = tmp_path / "photo.png"
    other = make_png(seed=7)
    path.write_bytes(other)
    typed = JobOptions(
        max_turns=1,
        history="all",
        stop=StopThresholds(semantic=7, patience=2, min_gain=0.5),
        budget=Budget(max_editor_calls=3),
    )
    by_path = client.create(path, "make it blue", options=typed)
    assert source_bytes(service.base_url, by_path.job.id) == other
    # The options round-trip through the server, defaults filled in.
    assert by_path.job.usage.editor_calls == 0 and by_path.job.usage.currency == "USD"
    assert by_path.job.options == JobOptions(
        max_turns=1,
        history="all",
        selection="best",
        stop=StopThresholds(7.0, 8.0, 2, 0.5),
        budget=Budget(max_editor_calls=3),
        candidates=1,
        rank_by="thinker",
    )
    by_str_path = client.create(str(path), "make it green", options=QUICK)
    assert source_bytes(service.base_url, by_str_path.job.id) == other
    by_file = client.create(io.BytesIO(png), "make it red", options=QUICK)
    assert source_bytes(service.base_url, by_file.job.id) == png

    by_url = client.create(image_url, "make it gold", options=QUICK)
    assert by_url.job.instruction == "make it gold"
    assert source_bytes(service.base_url, by_url.job.id) == png


def test_idempotent_replay(client: Client, png: bytes) -> None:
    key = f"test-{uuid.uuid4()}"
    first = client.create(png, "replay me", options=QUICK, idempotency_key=key)
    second = client.create(png, "replay me", options=QUICK, idempotency_key=key)
    assert (first.replayed, second.replayed) == (False, True)
    assert second.job.id == first.job.id and second.idempotency_key == key
    with pytest.raises(EditThinkerError) as e:
        client.create(png, "another request", options=QUICK, idempotency_key=key)
    assert e.value.code == "idempotency_key_reused" and e.value.status == 422


@pytest.fixture(scope="module")
def finished_job(service: Service, png: bytes) -> Job:
    with Client(service.base_url) as c:
        return c.create(png, "make the sky purple", options=QUICK, wait=30).job


def test_wait_returns_finished_job(finished_job: Job) -> None:
    assert finished_job.status == "succeeded" and finished_job.finished
    assert finished_job.result is not None and finished_job.result.turn == 1
    assert len(finished_job.turns) == 1 and finished_job.turns[0].critique is not None
    assert finished_job.finished_at is not None and finished_job.finished_at >= finished_job.created_at


def test_download_equals_result_bytes(client: Client, service: Service, finished_job: Job) -> None:
    result = httpx.get(f"{service.base_url}/v1/jobs/{finished_job.id}/result").content
    assert client.download(finished_job) == result == client.download(finished_job.id)
    assert result.startswith(b"\x89PNG")
    turn1 = httpx.get(f"{service.base_url}/v1/jobs/{finished_job.id}/turns/1/image").content
    assert client.download(finished_job.id, turn=1) == turn1
    with pytest.raises(EditThinkerError) as e:
        client.download(finished_job.id, turn=9)
    assert e.value.status == 404 and e.value.code == "not_found"


def test_stream_resumes_after_cut_connection(client: Client, service: Service, png: bytes) -> None:
    job = client.create(png, "make the sky purple").job
    # ~500 bytes is the response head and the first event or two: the cut
    # lands mid-job, usually inside an event.
    proxy = CuttingProxy(service.base_url.removeprefix("http://"), cut_after=500)
    try:
        with Client(proxy.url) as via_proxy:
            events: List[Event] = list(via_proxy.stream(job.id))
    finally:
        proxy.close()
    assert proxy.cut and proxy.connections >= 2
    ids = [e.id for e in events if e.id is not None]
    assert ids == stored_event_ids(service.base_url, job.id)
    assert events[-1].type == "job.succeeded" and events[-1].job_id == job.id
    assert any(e.type == "turn.thinking" and e.id is None for e in events)
    # A finished stream resumed after its last event answers 204: nothing.
    assert list(client.stream(job.id, after=ids[-1])) == []
    assert [e.id for e in client.stream(job.id, after=ids[-3])] == ids[-2:]


def test_run_returns_finished_job(client: Client, png: bytes) -> None:
    job = client.run(png, "make it brighter", timeout=60, options=QUICK)
    assert job.status == "succeeded" and job.result is not None and job.turns
    # One sandbox turn: one paid edit and one critique, in the job and its turn.
    assert (job.usage.editor_calls, job.usage.thinker_calls) == (1, 1)
    assert job.usage.thinker_output_tokens > 0 and job.turns[0].usage == job.usage


def test_candidates_are_typed_and_one_is_chosen(client: Client, service: Service, png: bytes) -> None:
    options = JobOptions(max_turns=1, candidates=3)
    job = client.run(png, "make it brighter", timeout=60, options=options)
    assert job.status == "succeeded" and job.options.candidates == 3
    turn = job.turns[0]
    assert [c.index for c in turn.candidates] == [0, 1, 2]
    assert len({c.seed for c in turn.candidates}) == 3
    chosen = turn.candidates[turn.chosen]
    assert chosen.critique == turn.critique
    scores = [c.critique.overall for c in turn.candidates if c.critique and c.critique.overall is not None]
    assert turn.critique is not None and turn.critique.overall == max(scores)
    assert job.usage.editor_calls == 3
    # A candidate's image is served; a one-candidate job keeps one candidate.
    assert httpx.get(service.base_url + chosen.image_url, timeout=30).status_code == 200
    single = client.run(png, "make it brighter", timeout=60, options=QUICK)
    assert single.turns[0].chosen == 0 and len(single.turns[0].candidates) == 1


def test_run_timeout_leaves_job_running(client: Client, png: bytes) -> None:
    started = time.monotonic()
    with pytest.raises(EditThinkerTimeout) as e:
        client.run(png, "make the sky purple", timeout=1.0)
    assert time.monotonic() - started < 3.0
    job_id = e.value.job_id
    assert client.get(job_id).status in ("queued", "running")
    events = list(client.stream(job_id))
    assert events[-1].type == "job.succeeded"
    assert client.get(job_id).status == "succeeded"


def test_run_timeout_can_cancel(client: Client, png: bytes) -> None:
    with pytest.raises(EditThinkerTimeout) as e:
        client.run(png, "make the sky purple", timeout=1.0, cancel_on_timeout=True, options=LONG)
    # A running job stops within one worker heartbeat (5 s).
    assert [e.type for e in client.stream(e.value.job_id)][-1] == "job.canceled"
    assert client.get(e.value.job_id).status == "canceled"


def test_cancel(client: Client, png: bytes) -> None:
    job = client.create(png, "never mind", options=LONG).job
    # A queued job is canceled at once; a running one (the worker may have
    # claimed it already) is answered as still running and stops within one
    # heartbeat.
    assert client.cancel(job.id).status in ("canceled", "running")
    assert [e.type for e in client.stream(job.id)][-1] == "job.canceled"
    assert client.get(job.id).stop_reason == "canceled"
    with pytest.raises(EditThinkerError) as e:
        client.cancel(job.id)
    assert (e.value.status, e.value.code) == (409, "job_finished")


def test_retry_failed_job(strict_service: Service, png: bytes) -> None:
    with Client(strict_service.base_url) as client:
        created = client.create(png, "make the sky purple", wait=30)
        job = created.job
        assert job.status == "failed" and job.error is not None and job.error.code == "editor_refused"
        ids = [e.id for e in client.stream(job.id) if e.id is not None]

        again = client.retry(job.id)
        assert again.id == job.id and again.status in ("queued", "running")
        # The stream resumed after the old job.failed shows the new run.
        types = [e.type for e in client.stream(job.id, after=ids[-1])]
        assert types[0] == "job.queued" and types[-1] == "job.failed"
        assert client.get(job.id).status == "failed"

    with Client(strict_service.base_url) as client, pytest.raises(EditThinkerError) as e:
        client.cancel(job.id)
    assert e.value.code == "job_finished"


def test_retry_of_unfailed_job_is_409(client: Client, finished_job: Job) -> None:
    with pytest.raises(EditThinkerError) as e:
        client.retry(finished_job.id)
    assert (e.value.status, e.value.code) == (409, "job_not_failed")


def test_validation_errors_carry_code_and_field(client: Client, png: bytes) -> None:
    with pytest.raises(EditThinkerError) as e:
        client.create(png, "x", options={"max_turns": 0})
    assert (e.value.status, e.value.code, e.value.field) == (422, "validation_failed", "options.max_turns")
    assert "max_turns" in e.value.detail and e.value.title

    with pytest.raises(EditThinkerError) as e:
        client.create(png, "x", editor="nope")
    assert (e.value.code, e.value.field) == ("unknown_editor", "editor")

    with pytest.raises(EditThinkerError) as e:
        client.get("01a24f49-8bff-7299-98c5-855784503408")
    assert (e.value.status, e.value.code) == (404, "not_found")


def test_list_iterates_pages(service: Service, png: bytes) -> None:
    requests: List[httpx.Request] = []

    class Counting(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            requests.append(request)
            return super().handle_request(request)

    with Client(service.base_url, transport=Counting()) as client:
        created = [client.create(png, f"list me {i}", options=QUICK).job.id for i in range(3)]
        requests.clear()
        listed = [j.id for j in client.list(limit=1)]
        assert len(requests) >= len(listed) >= 3
        assert all(r.url.params["limit"] == "1" for r in requests)
        assert len(set(listed)) == len(listed)
        # Newest first: the three appear in reverse creation order.
        assert [i for i in listed if i in created] == created[::-1]
        assert all(j.status == "succeeded" for j in client.list(status="succeeded", limit=2))
