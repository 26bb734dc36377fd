"""The README's examples, run as written: the quick start (only the base URL
changes) and the FastAPI webhook handler."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import httpx
import pytest

from conftest import QUICK, Receiver, Service

ROOT = Path(__file__).resolve().parents[1]


def example(after: str) -> str:
    """The README's first Python block after the text `after`."""
    text = (ROOT / "README.md").read_text()
    section = text.split(after, 1)[1]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m is not None
    return m.group(1)


def test_readme_quick_start(service: Service, png: bytes, tmp_path: Path) -> None:
    code = example("## Quick start")
    assert code.count("http://127.0.0.1:8080") == 1 and len(code.strip().splitlines()) <= 11
    (tmp_path / "photo.png").write_bytes(png)
    (tmp_path / "example.py").write_text(code.replace("http://127.0.0.1:8080", service.base_url))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=True
    ).stdout.splitlines()

    types = [line.split()[1] for line in out[:-1]]
    assert types[0] == "job.queued" and types[-1] == "job.succeeded" and "turn.critiqued" in types
    ids = [int(line.split()[0]) for line in out[:-1]]
    assert ids == sorted(set(ids))
    assert re.fullmatch(r"succeeded result turn \d+", out[-1])
    job_id = httpx.get(f"{service.base_url}/v1/jobs?limit=1").json()["jobs"][0]["id"]
    result = httpx.get(f"{service.base_url}/v1/jobs/{job_id}/result").content
    assert (tmp_path / "result.png").read_bytes() == result


def test_readme_fastapi_handler(
    service: Service, png: bytes, webhook_receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The FastAPI handler, fed a real delivery of the service, then the same one tampered."""
    from fastapi.testclient import TestClient

    from editthinker import Client

    with Client(service.base_url) as client:
        job = client.create(png, "make it purple", options=QUICK, webhook={"url": webhook_receiver.url}, wait=30).job
    headers, body = webhook_receiver.wait_for(lambda h, b: job.id.encode() in b and b"job.succeeded" in b)

    monkeypatch.setenv("ET_WEBHOOK_SECRET", service.secret)
    namespace: Dict[str, Any] = {}
    exec(compile(example("With FastAPI:"), "README.md", "exec"), namespace)
    forwarded = {k: v for k, v in headers.items() if k.lower().startswith("webhook-")}
    with TestClient(namespace["app"]) as app:
        accepted = app.post("/hooks/editthinker", content=body, headers=forwarded)
        assert accepted.status_code == 200 and accepted.json() == {"ok": True}
        tampered = app.post("/hooks/editthinker", content=body.replace(b"succeeded", b"failed"), headers=forwarded)
        assert tampered.status_code == 400
