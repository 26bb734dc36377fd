"""Typed views of the service's JSON (see openapi/openapi.json).

Plain dataclasses parsed by hand: no runtime dependency, and unknown fields
the server adds later are ignored rather than fatal (the full object stays in
`raw`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Dict, List, Literal, Mapping, Optional, cast

JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
StopReason = Literal[
    "satisfied", "max_turns", "plateau", "budget", "refusal", "invalid_refinement", "deadline", "canceled", "failed"
]
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "canceled"})
TERMINAL_EVENTS = frozenset({"job.succeeded", "job.failed", "job.canceled"})

_TS = re.compile(r"^(?P<base>[^.]*?)(?:\.(?P<frac>\d+))?(?P<tz>Z|[+-]\d\d:\d\d)?$")


def parse_datetime(value: Optional[str]) -> Optional[datetime]:
    """RFC 3339 → aware datetime; Python 3.9's fromisoformat takes neither
    `Z` nor more than six fraction digits, so normalise both first."""
    if value is None:
        return None
    m = _TS.match(value)
    if m is None:
        return datetime.fromisoformat(value)
    frac = m.group("frac")
    tz = m.group("tz") or ""
    text = m.group("base")
    if frac:
        text += "." + frac[:6].ljust(6, "0")
    text += "+00:00" if tz == "Z" else tz
    return datetime.fromisoformat(text)


def _opt_float(v: Any) -> Optional[float]:
    return None if v is None else float(v)


@dataclass(frozen=True)
class StopThresholds:
    """When the loop stops early: both scores at their thresholds, or (with
    `patience` > 0) the best overall score not rising by `min_gain` within
    `patience` turns."""

    semantic: Optional[float] = None
    quality: Optional[float] = None
    patience: Optional[int] = None
    min_gain: Optional[float] = None
    verifier: Optional[float] = None

    def to_dict(self) -> Dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StopThresholds:
        patience = d.get("patience")
        return cls(
            semantic=_opt_float(d.get("semantic")),
            quality=_opt_float(d.get("quality")),
            patience=None if patience is None else int(patience),
            min_gain=_opt_float(d.get("min_gain")),
            verifier=_opt_float(d.get("verifier")),
        )


@dataclass(frozen=True)
class Budget:
    """Spending limits of one job: editor calls and cost (in the service's
    currency)."""

    max_editor_calls: Optional[int] = None
    max_cost: Optional[float] = None

    def to_dict(self) -> Dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Budget:
        calls = d.get("max_editor_calls")
        return cls(None if calls is None else int(calls), _opt_float(d.get("max_cost")))


@dataclass(frozen=True)
class JobOptions:
    """Loop options. As input every field is optional (the server fills in
    defaults); on a job read back, the options in force."""

    max_turns: Optional[int] = None
    stop: Optional[StopThresholds] = None
    selection: Optional[Literal["best", "last"]] = None
    history: Optional[Literal["previous", "all"]] = None
    budget: Optional[Budget] = None
    deadline_seconds: Optional[int] = None
    candidates: Optional[int] = None
    first_turn_candidates: Optional[int] = None
    rank_by: Optional[Literal["thinker", "verifier"]] = None

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for name in ("candidates", "first_turn_candidates", "rank_by"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.max_turns is not None:
            out["max_turns"] = self.max_turns
        if self.stop is not None:
            out["stop"] = self.stop.to_dict()
        if self.selection is not None:
            out["selection"] = self.selection
        if self.history is not None:
            out["history"] = self.history
        if self.budget is not None:
            out["budget"] = self.budget.to_dict()
        if self.deadline_seconds is not None:
            out["deadline_seconds"] = self.deadline_seconds
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JobOptions:
        stop = d.get("stop")
        return cls(
            max_turns=d.get("max_turns"),
            stop=StopThresholds.from_dict(stop) if stop else None,
            selection=d.get("selection"),
            history=d.get("history"),
            budget=Budget.from_dict(d["budget"]) if d.get("budget") else None,
            deadline_seconds=d.get("deadline_seconds"),
            candidates=d.get("candidates"),
            first_turn_candidates=d.get("first_turn_candidates"),
            rank_by=d.get("rank_by"),
        )


@dataclass(frozen=True)
class Critique:
    satisfied: bool
    thinker_ms: int
    semantic: Optional[float] = None
    quality: Optional[float] = None
    overall: Optional[float] = None
    reasoning: Optional[str] = None
    refined_instruction: Optional[str] = None
    error: Optional[str] = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Critique:
        return cls(
            satisfied=bool(d["satisfied"]),
            thinker_ms=int(d["thinker_ms"]),
            semantic=_opt_float(d.get("semantic")),
            quality=_opt_float(d.get("quality")),
            overall=_opt_float(d.get("overall")),
            reasoning=d.get("reasoning"),
            refined_instruction=d.get("refined_instruction"),
            error=d.get("error"),
        )


@dataclass(frozen=True)
class Usage:
    """Paid provider calls and what they cost (a job's, a turn's or a
    tenant's): docs/api.md "Usage"."""

    editor_calls: int = 0
    editor_seconds: float = 0.0
    thinker_calls: int = 0
    thinker_input_tokens: int = 0
    thinker_output_tokens: int = 0
    verifier_calls: int = 0
    cost: float = 0.0
    currency: str = "USD"

    @classmethod
    def from_dict(cls, d: Optional[Mapping[str, Any]]) -> Usage:
        if not d:
            return cls()
        return cls(
            editor_calls=int(d.get("editor_calls", 0)),
            editor_seconds=float(d.get("editor_seconds", 0.0)),
            thinker_calls=int(d.get("thinker_calls", 0)),
            thinker_input_tokens=int(d.get("thinker_input_tokens", 0)),
            thinker_output_tokens=int(d.get("thinker_output_tokens", 0)),
            verifier_calls=int(d.get("verifier_calls", 0)),
            cost=float(d.get("cost", 0.0)),
            currency=str(d.get("currency", "USD")),
        )


@dataclass(frozen=True)
class VerifierScore:
    """A verifier's score of one candidate, on 0 to 10."""

    overall: float
    semantic: Optional[float] = None
    quality: Optional[float] = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VerifierScore:
        return cls(
            overall=float(d["overall"]),
            semantic=_opt_float(d.get("semantic")),
            quality=_opt_float(d.get("quality")),
        )


@dataclass(frozen=True)
class Candidate:
    """One candidate of a turn (`options.candidates`); a one-candidate
    turn has one, equal to the turn."""

    index: int
    image_url: str
    editor_ms: int
    seed: Optional[int] = None
    critique: Optional[Critique] = None
    verifier: Optional[VerifierScore] = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Candidate:
        c, v = d.get("critique"), d.get("verifier")
        return cls(
            index=int(d["index"]),
            image_url=d["image_url"],
            editor_ms=int(d["editor_ms"]),
            seed=d.get("seed"),
            critique=Critique.from_dict(c) if c else None,
            verifier=VerifierScore.from_dict(v) if v else None,
        )


@dataclass(frozen=True)
class Turn:
    index: int
    instruction: str
    image_url: str
    editor_ms: int
    critique: Optional[Critique] = None
    provider_request_id: Optional[str] = None
    usage: Usage = field(default_factory=Usage)
    chosen: int = 0
    candidates: List[Candidate] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Turn:
        c = d.get("critique")
        return cls(
            index=int(d["index"]),
            instruction=d["instruction"],
            image_url=d["image_url"],
            editor_ms=int(d["editor_ms"]),
            critique=Critique.from_dict(c) if c else None,
            provider_request_id=d.get("provider_request_id"),
            usage=Usage.from_dict(d.get("usage")),
            chosen=int(d.get("chosen", 0)),
            candidates=[Candidate.from_dict(x) for x in d.get("candidates", [])],
        )


@dataclass(frozen=True)
class JobResult:
    turn: int
    image_url: str


@dataclass(frozen=True)
class JobError:
    code: str
    message: str


@dataclass(frozen=True)
class Refusal:
    turn: int
    instruction: str
    reason: str
    kind: Optional[str] = None


@dataclass(frozen=True)
class Webhook:
    url: str
    events: Optional[List[str]] = None


def _result(v: Any) -> Optional[JobResult]:
    return JobResult(int(v["turn"]), v["image_url"]) if v else None


def _error(v: Any) -> Optional[JobError]:
    return JobError(v["code"], v["message"]) if v else None


@dataclass(frozen=True)
class JobSummary:
    """A job as listed by `GET /v1/jobs` (no turns, no options)."""

    id: str
    status: JobStatus
    instruction: str
    editor: str
    sandbox: bool
    attempt: int
    metadata: Dict[str, Any]
    created_at: datetime
    finished_at: Optional[datetime] = None
    result: Optional[JobResult] = None
    error: Optional[JobError] = None
    stop_reason: Optional[StopReason] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JobSummary:
        return cls(
            id=d["id"],
            status=cast(JobStatus, d["status"]),
            instruction=d["instruction"],
            editor=d["editor"],
            sandbox=bool(d["sandbox"]),
            attempt=int(d["attempt"]),
            metadata=dict(d.get("metadata") or {}),
            created_at=cast(datetime, parse_datetime(d["created_at"])),
            finished_at=parse_datetime(d.get("finished_at")),
            result=_result(d.get("result")),
            error=_error(d.get("error")),
            stop_reason=d.get("stop_reason"),
            raw=dict(d),
        )


@dataclass(frozen=True)
class Job:
    """A job with its turns (`GET /v1/jobs/{id}`)."""

    id: str
    status: JobStatus
    instruction: str
    editor: str
    sandbox: bool
    options: JobOptions
    turns: List[Turn]
    usage: Usage
    attempt: int
    priority: int
    metadata: Dict[str, Any]
    created_at: datetime
    result: Optional[JobResult] = None
    error: Optional[JobError] = None
    refusal: Optional[Refusal] = None
    stop_reason: Optional[StopReason] = None
    queue_position: Optional[int] = None
    webhook: Optional[Webhook] = None
    deadline_at: Optional[datetime] = None
    expires_at: Optional[datetime] = None
    started_at: Optional[datetime] = None
    finished_at: Optional[datetime] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Job:
        r = d.get("refusal")
        w = d.get("webhook")
        return cls(
            id=d["id"],
            status=cast(JobStatus, d["status"]),
            instruction=d["instruction"],
            editor=d["editor"],
            sandbox=bool(d["sandbox"]),
            options=JobOptions.from_dict(d.get("options") or {}),
            turns=[Turn.from_dict(t) for t in d.get("turns") or []],
            usage=Usage.from_dict(d.get("usage")),
            attempt=int(d["attempt"]),
            priority=int(d.get("priority", 0)),
            metadata=dict(d.get("metadata") or {}),
            created_at=cast(datetime, parse_datetime(d["created_at"])),
            result=_result(d.get("result")),
            error=_error(d.get("error")),
            refusal=Refusal(int(r["turn"]), r["instruction"], r["reason"], r.get("kind")) if r else None,
            stop_reason=d.get("stop_reason"),
            queue_position=d.get("queue_position"),
            webhook=Webhook(w["url"], w.get("events")) if w else None,
            deadline_at=parse_datetime(d.get("deadline_at")),
            expires_at=parse_datetime(d.get("expires_at")),
            started_at=parse_datetime(d.get("started_at")),
            finished_at=parse_datetime(d.get("finished_at")),
            raw=dict(d),
        )


@dataclass(frozen=True)
class CreateResult:
    """What `create` answers: the job, the Idempotency-Key sent (keep it to
    retry the create safely) and whether the server replayed an earlier
    create with that key instead of making a new job."""

    job: Job
    idempotency_key: str
    replayed: bool


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event. `id` is None for `turn.thinking` (live text,
    never stored or replayed). `data` is the event's JSON object; see the
    event table in docs/api.md for each type's fields."""

    id: Optional[int]
    type: str
    data: Dict[str, Any]

    @property
    def job_id(self) -> Optional[str]:
        v = self.data.get("job_id")
        return v if isinstance(v, str) else None

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS
