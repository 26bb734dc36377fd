from __future__ import annotations

from typing import Any, Mapping, Optional


class EditThinkerError(Exception):
    """An HTTP error answer, read from its RFC 9457 problem body.

    `code` is the service's stable error code (`validation_failed`,
    `unknown_editor`, `job_not_ready`, ...) and `field` the dotted path of the
    offending input when there is one. A body that is not a problem (a proxy's
    HTML page) leaves `code` None and puts the start of the text in `detail`.
    """

    def __init__(
        self,
        status: int,
        code: Optional[str],
        detail: str,
        field: Optional[str] = None,
        title: Optional[str] = None,
        *,
        type: Optional[str] = None,
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(f"{status} {code or title or 'error'}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.field = field
        self.title = title
        self.type = type
        self.retry_after = retry_after

    @classmethod
    def from_problem(cls, status: int, body: Any, text: str, retry_after: Optional[float] = None) -> EditThinkerError:
        if isinstance(body, Mapping) and "code" in body:
            return cls(
                status,
                str(body["code"]),
                str(body.get("detail") or ""),
                body.get("field"),
                body.get("title"),
                type=body.get("type"),
                retry_after=retry_after,
            )
        return cls(status, None, text[:200], retry_after=retry_after)


class EditThinkerTimeout(TimeoutError):
    """`run` gave up waiting. The job goes on unless `cancel_on_timeout` was
    set; `job_id` lets the caller pick it up again."""

    def __init__(self, job_id: str, timeout: float) -> None:
        super().__init__(f"job {job_id} did not finish within {timeout:g} s")
        self.job_id = job_id
        self.timeout = timeout
