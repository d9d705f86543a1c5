"""Loading the tokenizer that ships with a model directory.

The engine works on token ids; text enters and leaves through the model's own
Hugging Face tokenizer (tokenizer.json + tokenizer_config.json, chat template
included), loaded from local files only: nothing may reach a model hub.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase


def load_tokenizer(path: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """The fast tokenizer of the model directory ``path``; a clear error if there is none."""
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load a tokenizer from {str(path)!r}: {exc}") from exc


# apply_chat_template's own parameters: variables for the template must not
# reach them (a client could swap the template or its output format).
_RESERVED_KWARGS = frozenset(inspect.signature(PreTrainedTokenizerBase.apply_chat_template).parameters) - {
    "self", "tools", "documents", "kwargs"}


def apply_chat_template(
    tokenizer: PreTrainedTokenizerBase, conversation: list[dict[str, Any]],
    add_generation_prompt: bool = True, kwargs: dict[str, Any] | None = None,
) -> list[int]:
    """Token ids of a conversation rendered by the tokenizer's chat template.

    `kwargs` are variables for the template (tools, enable_thinking, ...).
    Any failure of the template (a role it refuses, a malformed message) is a
    ValueError, so the offline API and the server report it as bad input.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the model's tokenizer has no chat template")
    reserved = sorted(_RESERVED_KWARGS.intersection(kwargs or {}))
    if reserved:
        raise ValueError(f"chat_template_kwargs cannot set {', '.join(reserved)}")
    try:
        ids = tokenizer.apply_chat_template(
            conversation, add_generation_prompt=add_generation_prompt, tokenize=True, **(kwargs or {})
        )
    except Exception as exc:  # jinja raises its own types for a bad conversation
        raise ValueError(f"cannot apply the chat template: {exc}") from exc
    # transformers 5 returns a BatchEncoding-like mapping; older versions a list.
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def bad_word_sequences(tokenizer: PreTrainedTokenizerBase, words: list[str]) -> list[list[int]]:
    """The token sequences that spell each of `words`, alone and after a space
    (as it appears mid-text), without duplicates: what `bad_words` bans."""
    sequences: list[list[int]] = []
    for word in words:
        for text in (word.strip(), " " + word.strip()):
            ids = tokenizer.encode(text, add_special_tokens=False)
            if ids and ids not in sequences:
                sequences.append(ids)
    return sequences
