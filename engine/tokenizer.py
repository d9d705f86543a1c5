"""Loading the tokenizer that ships with a model directory.

The engine works on token ids; text enters and leaves through the model's own
Hugging Face tokenizer (tokenizer.json + tokenizer_config.json, chat template
included), loaded from local files only: nothing may reach a model hub.
"""

from __future__ import annotations

import os

from transformers import AutoTokenizer, PreTrainedTokenizerBase


def load_tokenizer(path: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """The fast tokenizer of the model directory ``path``; a clear error if there is none."""
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load a tokenizer from {str(path)!r}: {exc}") from exc
