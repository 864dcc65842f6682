"""Writing a ``multipart/related; type="application/dicom"`` body (PS3.18 8.6.1.2)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence


def encode_related(instances: Sequence[bytes]) -> tuple[str, bytes]:
    """``(Content-Type, body)`` with one ``application/dicom`` part per Part 10 file."""
    boundary = f"sharpcxr-{uuid.uuid4().hex}"
    chunks: list[bytes] = []
    for data in instances:
        chunks += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), data,
                   b"\r\n"]  # fmt: skip
    chunks.append(f"--{boundary}--\r\n".encode())
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return content_type, b"".join(chunks)
