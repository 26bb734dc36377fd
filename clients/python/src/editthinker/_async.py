from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import Any, AsyncIterator, List, Mapping, Optional, Type, Union

import httpx

from . import _core
from ._core import ImageInput, OptionsInput, Request, RetryPolicy, SSEDecoder, StreamCursor
from ._errors import EditThinkerError, EditThinkerTimeout
from ._models import CreateResult, Event, Job, JobSummary


class AsyncClient:
    """asyncio client, the same methods as `Client`. Every method is one HTTP call (plus the documented
    retries), except `list` (one call per page), `stream` (reconnects) and
    `run` (create + stream + get)."""

    def __init__(
        self,
        base_url: str,
        api_key: Optional[str] = None,
        headers: Optional[Mapping[str, str]] = None,
        timeout: Union[float, httpx.Timeout, None] = 30.0,
        transport: Optional[httpx.AsyncBaseTransport] = None,
        *,
        max_attempts: int = 3,
        max_retry_wait: float = 30.0,
        max_reconnects: int = 5,
    ) -> None:
        self._timeout = _core.as_timeout(timeout)
        self._retry = RetryPolicy(max_attempts, max_retry_wait)
        self._max_reconnects = max_reconnects
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers=_core.client_headers(api_key, headers),
            timeout=self._timeout,
            transport=transport,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, t: Optional[Type[BaseException]], e: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, req: Request) -> httpx.Response:
        attempt = 1
        while True:
            response = await self._http.request(req.method, req.path, **req.kwargs())
            delay = self._retry.delay(req, response, attempt)
            if delay is None:
                return response
            await response.aclose()
            await asyncio.sleep(delay)
            attempt += 1

    async def create(
        self,
        image: ImageInput,
        instruction: str,
        *,
        editor: Optional[str] = None,
        options: Optional[OptionsInput] = None,
        metadata: Optional[Mapping[str, Any]] = None,
        priority: Optional[int] = None,
        webhook: Optional[Mapping[str, Any]] = None,
        idempotency_key: Optional[str] = None,
        wait: Optional[int] = None,
    ) -> CreateResult:
        req, key = _core.build_create(
            image, instruction, editor=editor, options=options, metadata=metadata, priority=priority,
            webhook=webhook, idempotency_key=idempotency_key, wait=wait, base_timeout=self._timeout,
        )  # fmt: skip
        return _core.parse_create(await self._send(req), key)

    async def get(self, job_id: str) -> Job:
        return _core.parse_job(await self._send(Request("GET", _core.job_path(job_id), retryable=True)))

    async def list(self, status: Optional[str] = None, limit: Optional[int] = None) -> AsyncIterator[JobSummary]:
        """All jobs, newest first, fetching pages of `limit` as it goes."""
        cursor: Optional[str] = None
        while True:
            jobs, cursor = _core.parse_list(await self._send(_core.build_list(status, limit, cursor)))
            for job in jobs:
                yield job
            if cursor is None:
                return

    async def cancel(self, job_id: str) -> Job:
        return _core.parse_job(await self._send(Request("POST", _core.job_path(job_id) + "/cancel", retryable=True)))

    async def retry(self, job_id: str) -> Job:
        return _core.parse_job(await self._send(Request("POST", _core.job_path(job_id) + "/retry", retryable=False)))

    async def download(self, job: Union[str, Job, JobSummary], turn: Optional[int] = None) -> bytes:
        return _core.check(await self._send(_core.build_download(job, turn))).content

    def stream(self, job_id: str, after: Optional[int] = None) -> AsyncIterator[Event]:
        """The job's events from after event id `after` (from the start when
        None) until the job ends, reconnecting with Last-Event-ID."""
        return self._events(job_id, after)

    async def _events(self, job_id: str, after: Optional[int]) -> AsyncIterator[Event]:
        cur = StreamCursor(job_id, after, self._max_reconnects, self._retry.max_wait)
        timeout = _core.stream_timeout(self._timeout, None)
        while True:
            error: Optional[BaseException] = None
            try:
                async with self._http.stream("GET", cur.path, headers=cur.headers(), timeout=timeout) as response:
                    if response.status_code == 204:
                        return
                    if response.status_code >= 400:
                        await response.aread()
                        await asyncio.sleep(cur.on_error_status(response))
                        continue
                    decoder = SSEDecoder()
                    async for chunk in response.aiter_bytes():
                        for event in decoder.feed(chunk):
                            cur.on_event(event)
                            yield event
            except httpx.TransportError as e:  # dropped, timed out, refused
                error = e
            delay = cur.on_disconnect(error)
            if delay is None:
                return
            await asyncio.sleep(delay)

    async def run(
        self,
        image: ImageInput,
        instruction: str,
        *,
        timeout: Optional[float],
        cancel_on_timeout: bool = False,
        cancel_on_interrupt: bool = False,
        **create_kwargs: Any,
    ) -> Job:
        """Create a job, follow its events to the end and return the finished
        job (whatever its status). Past `timeout` seconds raises
        EditThinkerTimeout; the job keeps running unless `cancel_on_timeout`.
        Cancelling the calling task leaves it running too unless
        `cancel_on_interrupt`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job = (await self.create(image, instruction, **create_kwargs)).job
        if job.finished:  # Prefer: wait saw it end
            return job
        try:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            await asyncio.wait_for(self._drain(job.id), remaining)
        except asyncio.TimeoutError:
            if cancel_on_timeout:
                await asyncio.shield(self._cancel_quietly(job.id))
            raise EditThinkerTimeout(job.id, float(timeout or 0)) from None
        except asyncio.CancelledError:
            if cancel_on_interrupt:
                await asyncio.shield(self._cancel_quietly(job.id))
            raise
        return await self.get(job.id)

    async def _drain(self, job_id: str) -> None:
        async for _ in self._events(job_id, None):
            pass

    async def _cancel_quietly(self, job_id: str) -> None:
        try:
            await self.cancel(job_id)
        except EditThinkerError as e:
            if e.code != "job_finished":  # it ended meanwhile: nothing to cancel
                raise


__all__: List[str] = ["AsyncClient"]
