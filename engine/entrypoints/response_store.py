"""Stored responses of the Responses API: `previous_response_id`, GET and DELETE.

A response stored (`store` true, OpenAI's default) keeps its conversation as
input items (the earlier turns, its own input, then its output restated as
input: assistant messages and function calls) beside the response object. A
request naming it as `previous_response_id` continues that conversation with
its own input; the earlier `instructions` are not carried over, as OpenAI
specifies. The store is this process's memory, bounded by count with the
least recently used going first (`--responses-store-size`; 0: none), so it
holds across the requests one replica serves, not across replicas or restarts.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StoredResponse:
    #: The conversation up to and including this response's output, as input items.
    items: list[dict[str, Any]]
    #: The response object as it was returned.
    response: dict[str, Any]


class ResponseStore:
    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"the responses store size must be at least 0, not {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    def put(self, response_id: str, entry: StoredResponse) -> None:
        self._entries[response_id] = entry
        self._entries.move_to_end(response_id)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def get(self, response_id: str) -> StoredResponse | None:
        entry = self._entries.get(response_id)
        if entry is not None:
            self._entries.move_to_end(response_id)
        return entry

    def delete(self, response_id: str) -> bool:
        return self._entries.pop(response_id, None) is not None

    def __len__(self) -> int:
        return len(self._entries)
