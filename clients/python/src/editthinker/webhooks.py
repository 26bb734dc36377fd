"""Verify webhook deliveries, signed per Standard Webhooks
(https://www.standardwebhooks.com).

The service signs `"{webhook-id}.{webhook-timestamp}.{body}"` with
HMAC-SHA256, keyed with the base64-decoded part of the `whsec_` secret, and
sends `v1,<base64 signature>` in `webhook-signature` (several, separated by
spaces, while secrets rotate).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from typing import Any, Dict, Mapping, Optional, Union

__all__ = ["WebhookVerificationError", "verify", "sign"]


class WebhookVerificationError(Exception):
    """The delivery is not authentic (or is too old): answer it with a 4xx
    and do not act on it."""


def _key(secret: Union[str, bytes]) -> bytes:
    if isinstance(secret, bytes):
        return secret
    raw = secret[len("whsec_") :] if secret.startswith("whsec_") else secret
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError("webhook secret is not whsec_<base64>") from e


def _header(headers: Mapping[str, str], name: str) -> str:
    # Works for plain dicts in any case as well as case-insensitive header
    # objects (Starlette, httpx, requests).
    value = headers.get(name)
    if value is None:
        for k, v in headers.items():
            if k.lower() == name:
                value = v
                break
    if not value:
        raise WebhookVerificationError(f"missing {name} header")
    return value


def sign(secret: Union[str, bytes], msg_id: str, timestamp: int, body: Union[bytes, str]) -> str:
    """The `webhook-signature` value for a delivery (`v1,<base64>`)."""
    payload = body.encode() if isinstance(body, str) else body
    mac = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + payload, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def verify(
    headers: Mapping[str, str],
    body: Union[bytes, str],
    secret: Union[str, bytes],
    tolerance: int = 300,
    now: Optional[float] = None,
) -> Dict[str, Any]:
    """Check a delivery and return its parsed JSON body
    (`{"type", "timestamp", "data"}`).

    `body` must be the raw bytes as received: re-serialised JSON does not
    match the signature. Raises WebhookVerificationError when a header is
    missing, no signature matches, or `webhook-timestamp` is more than
    `tolerance` seconds from `now` (default: the current time), which stops
    replays of old deliveries. Deduplicate on the `webhook-id` header: a
    delivery may come more than once.
    """
    msg_id = _header(headers, "webhook-id")
    ts_text = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    try:
        timestamp = int(ts_text)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance")

    expected = sign(secret, msg_id, timestamp, body).split(",", 1)[1].encode()
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        # Compare every v1 candidate in constant time; other versions are
        # not ours to judge.
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            break
    else:
        raise WebhookVerificationError("no matching signature")

    try:
        parsed = json.loads(body)
    except ValueError:
        raise WebhookVerificationError("body is not JSON") from None
    if not isinstance(parsed, dict):
        raise WebhookVerificationError("body is not a JSON object")
    return parsed
