"""The official ``openai`` client pointed at a running app, and the one-frame question it sends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
from openai import OpenAI


def openai_client(url: str, api_key: str = "unused", *, ca: Path | None = None) -> OpenAI:
    """No retries: a test should see the server's first answer, refusals included. ``ca``: the certificate an
    https ``url`` is checked against."""
    tls = {} if ca is None else {"http_client": httpx2.Client(verify=str(ca))}
    return OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0, timeout=60, **tls)


def frame_question(question: str, image_url: str) -> list[dict[str, Any]]:
    return [
        {
            "role": "user",
            "content": [{"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": image_url}}],
        }
    ]


def ask(client: OpenAI, question: str, image_url: str, **options: Any) -> str:
    """The whole answer of a non-streaming completion."""
    completion = client.chat.completions.create(model="any", messages=frame_question(question, image_url), **options)
    return completion.choices[0].message.content or ""
