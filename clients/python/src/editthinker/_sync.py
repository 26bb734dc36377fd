from __future__ import annotations

import time
from types import TracebackType
from typing import Any, Iterator, List, Mapping, Optional, Type, Union

import httpx

from . import _core
from ._core import ImageInput, OptionsInput, Request, RetryPolicy, SSEDecoder, StreamCursor
from ._errors import EditThinkerError, EditThinkerTimeout
from ._models import CreateResult, Event, Job, JobSummary


class Client:
    """Blocking client. Every method is one HTTP call (plus the documented
    retries), except `list` (one call per page), `stream` (reconnects) and
    `run` (create + stream + get)."""

    def __init__(
        self,
        base_url: str,
        api_key: Optional[str] = None,
        headers: Optional[Mapping[str, str]] = None,
        timeout: Union[float, httpx.Timeout, None] = 30.0,
        transport: Optional[httpx.BaseTransport] = None,
        *,
        max_attempts: int = 3,
        max_retry_wait: float = 30.0,
        max_reconnects: int = 5,
    ) -> None:
        self._timeout = _core.as_timeout(timeout)
        self._retry = RetryPolicy(max_attempts, max_retry_wait)
        self._max_reconnects = max_reconnects
        self._http = httpx.Client(
            base_url=base_url,
            headers=_core.client_headers(api_key, headers),
            timeout=self._timeout,
            transport=transport,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, t: Optional[Type[BaseException]], e: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, req: Request) -> httpx.Response:
        attempt = 1
        while True:
            response = self._http.request(req.method, req.path, **req.kwargs())
            delay = self._retry.delay(req, response, attempt)
            if delay is None:
                return response
            response.close()
            time.sleep(delay)
            attempt += 1

    def create(
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
        return _core.parse_create(self._send(req), key)

    def get(self, job_id: str) -> Job:
        return _core.parse_job(self._send(Request("GET", _core.job_path(job_id), retryable=True)))

    def list(self, status: Optional[str] = None, limit: Optional[int] = None) -> Iterator[JobSummary]:
        """All jobs, newest first, fetching pages of `limit` as it goes."""
        cursor: Optional[str] = None
        while True:
            jobs, cursor = _core.parse_list(self._send(_core.build_list(status, limit, cursor)))
            yield from jobs
            if cursor is None:
                return

    def cancel(self, job_id: str) -> Job:
        return _core.parse_job(self._send(Request("POST", _core.job_path(job_id) + "/cancel", retryable=True)))

    def retry(self, job_id: str) -> Job:
        return _core.parse_job(self._send(Request("POST", _core.job_path(job_id) + "/retry", retryable=False)))

    def download(self, job: Union[str, Job, JobSummary], turn: Optional[int] = None) -> bytes:
        return _core.check(self._send(_core.build_download(job, turn))).content

    def stream(self, job_id: str, after: Optional[int] = None) -> Iterator[Event]:
        """The job's events from after event id `after` (from the start when
        None) until the job ends, reconnecting with Last-Event-ID."""
        return self._events(job_id, after, None)

    def _events(self, job_id: str, after: Optional[int], deadline: Optional[float]) -> Iterator[Event]:
        cur = StreamCursor(job_id, after, self._max_reconnects, self._retry.max_wait)
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            timeout = _core.stream_timeout(self._timeout, remaining)
            error: Optional[BaseException] = None
            try:
                with self._http.stream("GET", cur.path, headers=cur.headers(), timeout=timeout) as response:
                    if response.status_code == 204:
                        return
                    if response.status_code >= 400:
                        response.read()
                        time.sleep(cur.on_error_status(response))
                        continue
                    decoder = SSEDecoder()
                    for chunk in response.iter_bytes():
                        for event in decoder.feed(chunk):
                            cur.on_event(event)
                            yield event
                        # Check the caller's deadline as data arrives, not
                        # only when the read timeout fires.
                        if deadline is not None and time.monotonic() >= deadline:
                            raise _DeadlinePassed()
            except httpx.TransportError as e:  # dropped, timed out, refused
                error = e
            if deadline is not None and time.monotonic() >= deadline and not cur.terminal:
                raise _DeadlinePassed()
            delay = cur.on_disconnect(error)
            if delay is None:
                return
            time.sleep(delay)

    def run(
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
        Ctrl-C leaves it running too unless `cancel_on_interrupt`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job = self.create(image, instruction, **create_kwargs).job
        if job.finished:  # Prefer: wait saw it end
            return job
        try:
            for _ in self._events(job.id, None, deadline):
                pass
        except _DeadlinePassed:
            if cancel_on_timeout:
                self._cancel_quietly(job.id)
            raise EditThinkerTimeout(job.id, float(timeout or 0)) from None
        except KeyboardInterrupt:
            if cancel_on_interrupt:
                self._cancel_quietly(job.id)
            raise
        return self.get(job.id)

    def _cancel_quietly(self, job_id: str) -> None:
        try:
            self.cancel(job_id)
        except EditThinkerError as e:
            if e.code != "job_finished":  # it ended meanwhile: nothing to cancel
                raise


class _DeadlinePassed(Exception):
    pass


__all__: List[str] = ["Client"]
