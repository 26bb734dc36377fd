from __future__ import annotations

import base64
import json
import secrets
import time
from typing import Dict

import pytest

from editthinker import Client
from editthinker.webhooks import WebhookVerificationError, sign, verify

from conftest import QUICK, Receiver, Service


def test_real_delivery_verifies(service: Service, png: bytes, webhook_receiver: Receiver) -> None:
    with Client(service.base_url) as client:
        job = client.create(png, "make it purple", options=QUICK, webhook={"url": webhook_receiver.url}, wait=30).job
    assert job.status == "succeeded" and job.webhook is not None

    headers, body = webhook_receiver.wait_for(lambda h, b: job.id.encode() in b)
    payload = verify(headers, body, service.secret)
    assert payload["type"] == "job.succeeded" and payload["data"]["job_id"] == job.id

    with pytest.raises(WebhookVerificationError):
        verify(headers, body.replace(b"succeeded", b"failed"), service.secret)
    with pytest.raises(WebhookVerificationError):
        verify(headers, body, service.secret, now=int(headers["webhook-timestamp"]) + 301)
    stale = dict(headers, **{"webhook-timestamp": str(int(headers["webhook-timestamp"]) - 3600)})
    with pytest.raises(WebhookVerificationError):
        verify(stale, body, service.secret)
    other = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    with pytest.raises(WebhookVerificationError):
        verify(headers, body, other)


def test_sign_verify_rotation_and_missing_headers() -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    old = "whsec_" + base64.b64encode(b"o" * 32).decode()
    body = json.dumps({"type": "job.succeeded", "data": {}}).encode()
    now = int(time.time())
    headers: Dict[str, str] = {
        "Webhook-Id": "msg_1",
        "Webhook-Timestamp": str(now),
        # Several signatures while secrets rotate; any valid v1 one passes.
        "Webhook-Signature": f"v2,abc {sign(old, 'msg_1', now, body)} {sign(secret, 'msg_1', now, body)}",
    }
    assert verify(headers, body, secret)["type"] == "job.succeeded"
    assert verify(headers, body.decode(), secret, now=now + 299)["type"] == "job.succeeded"
    with pytest.raises(WebhookVerificationError):
        verify(headers, body, secret, now=now - 301)
    with pytest.raises(WebhookVerificationError):
        verify({k: v for k, v in headers.items() if k != "Webhook-Id"}, body, secret)
    with pytest.raises(WebhookVerificationError):
        verify(dict(headers, **{"Webhook-Id": "msg_2"}), body, secret)
