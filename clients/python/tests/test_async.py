"""AsyncClient against the real service. Each test drives its own event
loop with asyncio.run (no pytest plugin needed)."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from editthinker import AsyncClient, EditThinkerError, EditThinkerTimeout, Event, Job

from conftest import QUICK, CuttingProxy, Service, make_png
from test_client import LONG, source_bytes, stored_event_ids


def test_async_create_kinds_replay_and_wait(service: Service, png: bytes, image_url: str, tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(make_png(seed=3))

    async def main() -> None:
        async with AsyncClient(service.base_url) as client:
            by_bytes = await client.create(png, "make it purple", options=QUICK)
            by_path = await client.create(path, "make it purple", options=QUICK)
            by_url = await client.create(image_url, "make it purple", options=QUICK)
            assert source_bytes(service.base_url, by_bytes.job.id) == png
            assert source_bytes(service.base_url, by_path.job.id) == path.read_bytes()
            assert source_bytes(service.base_url, by_url.job.id) == png

            key = str(uuid.uuid4())
            first = await client.create(png, "wait for me", options=QUICK, idempotency_key=key, wait=30)
            again = await client.create(png, "wait for me", options=QUICK, idempotency_key=key)
            assert first.job.status == "succeeded" and first.job.result is not None
            assert (again.job.id, again.replayed, first.replayed) == (first.job.id, True, False)
            assert await client.download(first.job) == await client.download(first.job.id, turn=first.job.result.turn)

            with pytest.raises(EditThinkerError) as e:
                await client.create(png, "x", options={"max_turns": 0})
            assert (e.value.code, e.value.field) == ("validation_failed", "options.max_turns")

            listed = [j.id async for j in client.list(limit=2)]
            assert by_url.job.id in listed and len(set(listed)) == len(listed)

    asyncio.run(main())


def test_async_stream_resumes_after_cut_connection(service: Service, png: bytes) -> None:
    proxy = CuttingProxy(service.base_url.removeprefix("http://"), cut_after=500)

    async def main() -> Tuple[str, List[Event]]:
        async with AsyncClient(service.base_url) as direct, AsyncClient(proxy.url) as via_proxy:
            job = (await direct.create(png, "make the sky purple")).job
            return job.id, [e async for e in via_proxy.stream(job.id)]

    try:
        job_id, events = asyncio.run(main())
    finally:
        proxy.close()
    assert proxy.cut and proxy.connections >= 2
    assert [e.id for e in events if e.id is not None] == stored_event_ids(service.base_url, job_id)
    assert events[-1].type == "job.succeeded"


def test_async_run_and_timeouts(service: Service, png: bytes) -> None:
    async def timed_out(client: AsyncClient, **kwargs: Any) -> str:
        with pytest.raises(EditThinkerTimeout) as e:
            await client.run(png, "make the sky purple", timeout=1.0, **kwargs)
        return e.value.job_id

    async def last_type(client: AsyncClient, job_id: str) -> str:
        return [e.type async for e in client.stream(job_id)][-1]

    async def main() -> None:
        async with AsyncClient(service.base_url) as client:
            started = time.monotonic()
            finished, kept, canceled = await asyncio.gather(
                client.run(png, "make it brighter", timeout=60, options=QUICK),
                timed_out(client),
                timed_out(client, cancel_on_timeout=True, options=LONG),
            )
            assert time.monotonic() - started < 4.0
            assert isinstance(finished, Job) and finished.status == "succeeded" and finished.turns
            assert (await client.get(kept)).status in ("queued", "running")
            ends = await asyncio.gather(last_type(client, kept), last_type(client, canceled))
            assert list(ends) == ["job.succeeded", "job.canceled"]

    asyncio.run(main())


def test_async_task_cancel_leaves_job_unless_asked(service: Service, png: bytes) -> None:
    async def main() -> None:
        async with AsyncClient(service.base_url) as client:
            plain = asyncio.create_task(client.run(png, "keep going", timeout=None))
            asked = asyncio.create_task(
                client.run(png, "stop me", timeout=None, cancel_on_interrupt=True, options=LONG)
            )
            await asyncio.sleep(1.0)
            jobs = [j async for j in client.list(limit=2)]  # all, newest first
            plain.cancel()
            asked.cancel()
            for task in (plain, asked):
                with pytest.raises(asyncio.CancelledError):
                    await task
            by_instruction: Dict[str, str] = {}
            for j in jobs:
                if j.instruction in ("keep going", "stop me"):
                    by_instruction.setdefault(j.instruction, j.id)
            ends = {}
            for name, job_id in by_instruction.items():
                ends[name] = [e.type async for e in client.stream(job_id)][-1]
            assert ends == {"keep going": "job.succeeded", "stop me": "job.canceled"}

    asyncio.run(main())
