"""Everything the sync and async clients share: building requests, reading
answers, the retry rule, the SSE parser and the reconnect state. The two
clients only do the IO."""

from __future__ import annotations

import io
import json
import os
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO, Any, Dict, List, Mapping, Optional, Tuple, Union

import httpx

from ._errors import EditThinkerError
from ._models import TERMINAL_EVENTS, CreateResult, Event, Job, JobOptions, JobSummary

__version__ = "0.1.0"

#: What `create` accepts as the source image: raw bytes, an open binary file,
#: a filesystem path, or an `http(s)://` URL that the server fetches.
ImageInput = Union[bytes, bytearray, memoryview, IO[bytes], "os.PathLike[str]", str]
OptionsInput = Union[JobOptions, Mapping[str, Any]]

# The server sends a keep-alive comment at most 20 s apart; a read that waits
# much longer than that is a dead connection.
STREAM_READ_TIMEOUT = 60.0
USER_AGENT = f"editthinker-python/{__version__}"


@dataclass
class Request:
    method: str
    path: str
    retryable: bool
    params: Optional[Dict[str, str]] = None
    headers: Dict[str, str] = field(default_factory=dict)
    json: Any = None
    data: Optional[Dict[str, str]] = None
    files: Optional[Dict[str, Tuple[str, bytes, str]]] = None
    timeout: Optional[httpx.Timeout] = None

    def kwargs(self) -> Dict[str, Any]:
        """Arguments for httpx's `request`/`stream` (built afresh per attempt,
        so a retried multipart body is sent again in full)."""
        kw: Dict[str, Any] = {"params": self.params, "headers": self.headers}
        if self.json is not None:
            kw["json"] = self.json
        if self.data is not None:
            kw["data"] = self.data
        if self.files is not None:
            kw["files"] = self.files
        if self.timeout is not None:
            kw["timeout"] = self.timeout
        return kw


def job_path(job_id: str) -> str:
    if not job_id or "/" in job_id:
        raise ValueError(f"not a job id: {job_id!r}")
    return f"/v1/jobs/{job_id}"


def build_create(
    image: ImageInput,
    instruction: str,
    *,
    editor: Optional[str],
    options: Optional[OptionsInput],
    metadata: Optional[Mapping[str, Any]],
    priority: Optional[int],
    webhook: Optional[Mapping[str, Any]],
    idempotency_key: Optional[str],
    wait: Optional[int],
    base_timeout: httpx.Timeout,
) -> Tuple[Request, str]:
    key = idempotency_key or str(uuid.uuid4())
    headers = {"Idempotency-Key": key}
    timeout = None
    if wait is not None:
        headers["Prefer"] = f"wait={wait}"
        # The server holds the answer up to `wait` seconds; the read timeout
        # must outlast it.
        read = base_timeout.read
        timeout = base_timeout if read is None else with_read(base_timeout, max(read, wait + 10.0))
    opts = options.to_dict() if isinstance(options, JobOptions) else (dict(options) if options is not None else None)
    fields: Dict[str, Any] = {"instruction": instruction}
    for name, value in (
        ("editor", editor),
        ("options", opts),
        ("metadata", metadata),
        ("priority", priority),
        ("webhook", webhook),
    ):
        if value is not None:
            fields[name] = dict(value) if isinstance(value, Mapping) else value

    req = Request("POST", "/v1/jobs", retryable=True, headers=headers, timeout=timeout)
    if isinstance(image, str) and image.startswith(("http://", "https://")):
        req.json = {"image": {"url": image}, **fields}
        return req, key
    content, filename = _read_image(image)
    # Multipart takes objects as JSON text and numbers as text.
    req.data = {k: (json.dumps(v) if isinstance(v, dict) else str(v)) for k, v in fields.items()}
    req.files = {"image": (filename, content, "application/octet-stream")}
    return req, key


def _read_image(image: ImageInput) -> Tuple[bytes, str]:
    # Read files fully up front: a retried create must send the same bytes
    # (the idempotency check compares them).
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image), "image"
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        return path.read_bytes(), path.name
    if isinstance(image, io.TextIOBase):
        raise TypeError("open the image file in binary mode ('rb')")
    content = image.read()
    if not isinstance(content, bytes):
        raise TypeError("the image file object must return bytes")
    name = getattr(image, "name", None)
    return content, os.path.basename(name) if isinstance(name, str) else "image"


def build_list(status: Optional[str], limit: Optional[int], cursor: Optional[str]) -> Request:
    params: Dict[str, str] = {}
    if status is not None:
        params["status"] = status
    if limit is not None:
        params["limit"] = str(limit)
    if cursor is not None:
        params["cursor"] = cursor
    return Request("GET", "/v1/jobs", retryable=True, params=params)


def build_download(job: Union[str, Job, JobSummary], turn: Optional[int]) -> Request:
    job_id = job if isinstance(job, str) else job.id
    path = job_path(job_id) + ("/result" if turn is None else f"/turns/{int(turn)}/image")
    return Request("GET", path, retryable=True)


def retry_after_seconds(response: httpx.Response) -> Optional[float]:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    """429 and 503 answers to idempotent requests are tried again, up to
    `max_attempts` in all, after `Retry-After` (capped) or a short backoff."""

    max_attempts: int = 3
    max_wait: float = 30.0

    def delay(self, req: Request, response: httpx.Response, attempt: int) -> Optional[float]:
        if not req.retryable or response.status_code not in (429, 503) or attempt >= self.max_attempts:
            return None
        after = retry_after_seconds(response)
        return min(self.max_wait, after if after is not None else 0.5 * 2.0 ** (attempt - 1))


def error_from(response: httpx.Response) -> EditThinkerError:
    """Call once the body has been read."""
    text = response.text
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    return EditThinkerError.from_problem(response.status_code, body, text, retry_after_seconds(response))


def check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise error_from(response)
    return response


def parse_job(response: httpx.Response) -> Job:
    return Job.from_dict(check(response).json())


def parse_create(response: httpx.Response, key: str) -> CreateResult:
    job = parse_job(response)
    replayed = response.headers.get("Idempotent-Replayed", "").strip().lower() == "true"
    return CreateResult(job=job, idempotency_key=key, replayed=replayed)


def parse_list(response: httpx.Response) -> Tuple[List[JobSummary], Optional[str]]:
    body = check(response).json()
    return [JobSummary.from_dict(j) for j in body.get("jobs", [])], body.get("next_cursor")


# --- Server-Sent Events -----------------------------------------------------

_EOL = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"


class SSEDecoder:
    """Incremental text/event-stream parser (WHATWG HTML, "Parsing an event
    stream"). Lines end at CRLF, LF or CR, split on bytes so that a U+2028 in
    JSON text is not taken for a line break."""

    def __init__(self) -> None:
        self._buf = b""
        self._started = False
        self._reset()

    def _reset(self) -> None:
        self._type = ""
        self._data: List[str] = []
        self._id: Optional[str] = None

    def feed(self, chunk: bytes) -> List[Event]:
        buf = self._buf + chunk
        if not self._started:
            if len(buf) < 3 and _BOM.startswith(buf):  # maybe a split BOM
                self._buf = buf
                return []
            self._started = True
            if buf.startswith(_BOM):
                buf = buf[3:]
        events: List[Event] = []
        pos = 0
        while True:
            m = _EOL.search(buf, pos)
            # A CR at the very end may be the first half of a CRLF.
            if m is None or (m.group() == b"\r" and m.end() == len(buf)):
                break
            ev = self._line(buf[pos : m.start()].decode("utf-8", errors="replace"))
            if ev is not None:
                events.append(ev)
            pos = m.end()
        self._buf = buf[pos:]
        return events

    def _line(self, line: str) -> Optional[Event]:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):  # comment (keep-alive)
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._type = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> Optional[Event]:
        type_, data, id_ = self._type or "message", self._data, self._id
        self._reset()
        if not data:
            return None
        text = "\n".join(data)
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        # Every event of this API carries a JSON object; anything else is
        # kept, unparsed, under "raw" rather than dropped.
        payload: Dict[str, Any] = parsed if isinstance(parsed, dict) else {"raw": text}
        event_id = int(id_) if id_ is not None and id_.strip().isdigit() else None
        return Event(id=event_id, type=type_, data=payload)


class StreamCursor:
    """Reconnect state of one `stream` call: the last stored event id (sent as
    Last-Event-ID), whether the last stored event was terminal, and how many
    connection attempts failed in a row."""

    def __init__(self, job_id: str, after: Optional[int], max_reconnects: int, max_backoff: float) -> None:
        self.path = job_path(job_id) + "/events"
        self.last_id = after
        self.terminal = False
        self.failures = 0
        self.max_reconnects = max_reconnects
        self.max_backoff = max_backoff

    def headers(self) -> Dict[str, str]:
        h = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.last_id is not None:
            h["Last-Event-ID"] = str(self.last_id)
        return h

    def on_event(self, event: Event) -> None:
        if event.id is not None:
            self.last_id = event.id
            # A job.queued after job.failed (a retried job) reopens the job.
            self.terminal = event.type in TERMINAL_EVENTS
        self.failures = 0

    def on_error_status(self, response: httpx.Response) -> float:
        """An error answer (body read). 429/503 wait and reconnect; any
        other status raises."""
        if response.status_code in (429, 503):
            self.failures += 1
            if self.failures <= self.max_reconnects:
                after = retry_after_seconds(response)
                return min(self.max_backoff, after if after is not None else self._backoff())
        raise error_from(response)

    def on_disconnect(self, error: Optional[BaseException]) -> Optional[float]:
        """The connection ended (cleanly, or with `error`). None: the stream
        is over. Else the seconds to wait before reconnecting."""
        if self.terminal:
            return None
        self.failures += 1
        if self.failures > self.max_reconnects:
            if error is not None:
                raise error
            raise EditThinkerError(0, None, f"event stream of {self.path} kept closing before the job ended")
        return self._backoff()

    def _backoff(self) -> float:
        return min(self.max_backoff, 0.25 * 2.0 ** (self.failures - 1))


def stream_timeout(base: httpx.Timeout, remaining: Optional[float]) -> httpx.Timeout:
    read = STREAM_READ_TIMEOUT if remaining is None else max(0.05, min(STREAM_READ_TIMEOUT, remaining))
    return with_read(base, read)


def with_read(base: httpx.Timeout, read: float) -> httpx.Timeout:
    return httpx.Timeout(connect=base.connect, read=read, write=base.write, pool=base.pool)


def client_headers(api_key: Optional[str], headers: Optional[Mapping[str, str]]) -> Dict[str, str]:
    out = {"User-Agent": USER_AGENT}
    if api_key:
        out["Authorization"] = f"Bearer {api_key}"
    out.update(headers or {})
    return out


def as_timeout(timeout: Union[float, httpx.Timeout, None]) -> httpx.Timeout:
    return timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
