"""A request's affinity key: the part of its prompt that later requests repeat.

The engines' prefix caches are keyed by the tokens at the start of a prompt,
so the key is the start of the prompt text: a completion's prompt, a chat's
first user message (a conversation's later turns repeat it, while requests
that only share a system prompt still spread, each replica caching that
prompt once), the Responses API's input likewise. The model name is part of
the key: an adapter's KV blocks are never shared with the base model's.
"""

from __future__ import annotations

from typing import Any

from pagoda import affinity as shared_affinity

from . import balancer

#: Characters of the prompt in the key (KubeAI's default is 100): a few dozen
#: tokens, enough to tell documents and conversations apart.
DEFAULT_PREFIX_CHARS = 100


def _text(content: Any) -> str:
    """The text of a message's content: a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict)
                       and isinstance(part.get("text", ""), str))
    return ""


def _first_user_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    dicts = [m for m in messages if isinstance(m, dict)]
    for message in dicts:
        if message.get("role") == "user":
            return _text(message.get("content"))
    return "".join(_text(m.get("content")) for m in dicts)


def prompt_text(path: str, body: dict[str, Any]) -> str:
    """The prompt's text as far as routing cares, by endpoint."""
    if path.endswith("chat/completions"):
        return _first_user_text(body.get("messages"))
    if path.endswith("responses"):
        given = body.get("input")
        return given if isinstance(given, str) else _first_user_text(given)
    prompt = body.get("prompt", body.get("input"))
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch: its first prompt
    if isinstance(prompt, list):
        return " ".join(str(t) for t in prompt)  # token ids
    return prompt if isinstance(prompt, str) else ""


def affinity_key(model: str, path: str, body: dict[str, Any], prefix_chars: int = DEFAULT_PREFIX_CHARS) -> str | None:
    """The key requests sharing a prefix share; None when the prompt has no text."""
    text = prompt_text(path, body)[:prefix_chars]
    return f"{model}\0{text}" if text else None


def affinity_point(model: str, path: str, body: dict[str, Any], prefix_chars: int = DEFAULT_PREFIX_CHARS,
                   session: str | None = None) -> tuple[int | None, bool]:
    """(the request's point on the ring, whether it is pinned there).

    A Responses request continuing a stored response is pinned to the point
    its conversation started at, which the response id carries
    (`pagoda.affinity`): that replica holds the stored conversation. A
    request naming its `session` (a user or conversation id the client
    sends in the gateway's session header) is keyed by it instead of its
    prompt, as vLLM production-stack's session routing does: every turn of a
    session meets the same replica, however its messages begin.
    """
    if path.endswith("responses"):
        previous = shared_affinity.point_of_response(body.get("previous_response_id"))
        if previous is not None:
            return previous, True
    key = f"{model}\0session\0{session}" if session else affinity_key(model, path, body, prefix_chars)
    return (None if key is None else balancer.point(key)), False
