"""Records the store returns besides `Task`, and the pure payload bounding for events."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# An event payload bigger than this (serialized, UTF-8) is replaced by a truncation marker.
MAX_PAYLOAD_BYTES = 16 * 1024
PREVIEW_CHARS = 2048  # <= 8 KiB even if every char needs 4 bytes
_SMALL_FIELD_BYTES = 256  # top-level fields this small survive truncation
_SMALL_FIELDS_BUDGET = 2048
MAX_EVENT_TYPE = 200


class Event(BaseModel):
    model_config = ConfigDict(frozen=True)

    task_id: str
    seq: int
    at: datetime
    type: str
    payload: dict[str, Any]


class Daemon(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    namespace: str
    name: str
    labels: dict[str, str] = Field(default_factory=dict)
    capacity: int
    in_flight: int = 0
    token_hash: str | None = None
    connected: bool = True
    last_seen: datetime
    registered_at: datetime

    @property
    def free(self) -> int:
        return max(self.capacity - self.in_flight, 0)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str)


def _strip_nul(value: Any) -> Any:
    """jsonb cannot hold U+0000; agent output sometimes does."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_strip_nul(str(k)): _strip_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strip_nul(v) for v in value]
    return value


def encode_payload(payload: dict[str, Any]) -> str:
    """Serialize an event payload for jsonb, bounded to MAX_PAYLOAD_BYTES.

    Oversized payloads are kept as a marker, never rejected:
    {"truncated": true, "original_bytes": N, "fields": {small top-level fields}, "preview": "..."}.
    """
    try:
        text = _dumps(payload)
    except (TypeError, ValueError) as exc:  # NaN, circular references
        return _dumps({"unencodable": True, "error": str(exc)[:200], "preview": repr(payload)[:PREVIEW_CHARS]})
    if "\\u0000" in text:
        text = _dumps(_strip_nul(payload))
    size = len(text.encode())
    if size <= MAX_PAYLOAD_BYTES:
        return text
    fields: dict[str, Any] = {}
    budget = _SMALL_FIELDS_BUDGET
    for key, value in payload.items():
        piece = len(_dumps({str(key): value}).encode())
        if piece <= _SMALL_FIELD_BYTES and piece <= budget:
            fields[str(key)] = value
            budget -= piece
    marker = {"truncated": True, "original_bytes": size, "fields": fields, "preview": text[:PREVIEW_CHARS]}
    return _dumps(_strip_nul(marker))
