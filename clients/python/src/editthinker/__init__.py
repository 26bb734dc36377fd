"""Python client for the EditThinker Service HTTP API.

from editthinker import Client
with Client("http://127.0.0.1:8080") as client:
    job = client.run("photo.png", "make the sky purple", timeout=300)
"""

from ._async import AsyncClient
from ._core import ImageInput, OptionsInput, __version__
from ._errors import EditThinkerError, EditThinkerTimeout
from ._models import (
    Budget,
    Candidate,
    CreateResult,
    Critique,
    Event,
    Job,
    JobError,
    JobOptions,
    JobResult,
    JobStatus,
    JobSummary,
    Refusal,
    StopReason,
    StopThresholds,
    Turn,
    Usage,
    VerifierScore,
    Webhook,
)
from ._sync import Client
from .webhooks import WebhookVerificationError

__all__ = [
    "AsyncClient",
    "Budget",
    "Candidate",
    "Client",
    "CreateResult",
    "Critique",
    "EditThinkerError",
    "EditThinkerTimeout",
    "Event",
    "ImageInput",
    "Job",
    "JobError",
    "JobOptions",
    "JobResult",
    "JobStatus",
    "JobSummary",
    "OptionsInput",
    "Refusal",
    "StopReason",
    "StopThresholds",
    "Turn",
    "Usage",
    "VerifierScore",
    "Webhook",
    "WebhookVerificationError",
    "__version__",
]
