"""What `pagoda gateway` and `pagoda serve` agree on so that a stored response's
continuation finds the replica that stored it.

The gateway routes each request by a 64-bit affinity point (the hash of its
prompt's prefix key) and tells the engine that point in `HEADER`. The engine
writes the point into the ids of the Responses API's responses, and carries
it from a `previous_response_id` into the next id, so every response of one
conversation names the point its first turn was routed by; the gateway routes
a continuation by the point in its `previous_response_id`, to the replica
that holds the stored conversation, without keeping any state of its own.
"""

from __future__ import annotations

import re
import uuid

#: Request header: the affinity point, 16 lowercase hex digits.
HEADER = "x-pagoda-affinity"
_POINT = re.compile(r"[0-9a-f]{16}")
_RESPONSE_ID = re.compile(r"resp-([0-9a-f]{16})-[0-9a-f]+")


def format_point(point: int) -> str:
    return f"{point:016x}"


def parse_point(text: str | None) -> int | None:
    """The point a header value names, or None when it is not one."""
    return int(text, 16) if text is not None and _POINT.fullmatch(text) else None


def response_id(point: int | None) -> str:
    """A new response id carrying `point` (when there is one)."""
    unique = uuid.uuid4().hex
    return f"resp-{unique}" if point is None else f"resp-{format_point(point)}-{unique}"


def point_of_response(response_id: str | None) -> int | None:
    """The point a response id carries, or None."""
    match = _RESPONSE_ID.fullmatch(response_id) if isinstance(response_id, str) else None
    return int(match.group(1), 16) if match else None
