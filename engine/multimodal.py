"""Images in prompts: from what a request gives to placeholder tokens, pixels and cache keys.

A prompt names each image with one placeholder token (`<image>` for LLaVA), where its chat
template or the user put it. The engine expands each to its run of placeholders, one per image
feature, so positions, the KV cache, chunked prefill and preemption treat an image as the run of
tokens it becomes; the model runner puts the image's features in those rows. A run's length is
the model's `tokens_per_image`, or what the processor made of that image: Qwen-VL's patch grid,
InternVL's tiles, Pixtral's rows (whose break tokens stay in the run as text). Pixels come from the
model directory's own image processor (preprocessor_config.json), as transformers' processor
makes them.

Prefix caching must not confuse two images behind the same placeholder tokens: every KV block
that covers part of an image is keyed by that image's content hash and where the block starts in
it (`ImageInputs.block_key`), as vLLM keys blocks by multimodal hashes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from pagoda.engine.model_config import ModelConfig, VisionConfig

# Bounds on what a request may make the server fetch and decode.
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
FETCH_TIMEOUT_S = 10.0


@dataclass(eq=False)
class ImageInputs:
    """A prompt's images: pixels, where each one's placeholder run starts and how long it is, their
    content hashes, and their features once the vision tower has run (kept for preemption and the
    other n - 1 sequences)."""

    pixel_values: torch.Tensor  # [images, 3, H, W]; Qwen-VL's patches [patches, C*T*P*P]; InternVL's tiles
    offsets: list[int]  # first prompt position of each image's placeholders
    lengths: list[int]  # each image's placeholder count (its feature count)
    hashes: list[int]
    # Whether an image's tokens attend to one another both ways (Gemma 3): the whole run is then
    # computed in one step, and each of its tokens sees keys to the run's end.
    bidirectional: bool = False
    # Each image's layout, which sizes its features: Qwen-VL's patch grid (temporal, height, width) [images, 3],
    # InternVL's tile count [images].
    grids: torch.Tensor | None = None
    # Multimodal RoPE (Qwen2-VL): the prompt's (temporal, height, width) positions [3, prompt tokens],
    # and how far past its index a later token's position is (text after images counts from the
    # largest image position, not from the number of tokens).
    rope_positions: torch.Tensor | None = field(default=None, repr=False)
    rope_delta: int = 0
    # Pixtral (Mistral 3): each image's features per row, where every row of its run ends in a token of
    # its own ([IMG_BREAK], the last [IMG_END]) that keeps its embedding; None: every run position is a feature.
    row_widths: list[int] | None = None
    features: list[torch.Tensor] | None = field(default=None, repr=False)  # per image [length, hidden]

    def spans(self, start: int, end: int) -> list[tuple[int, int, int, int]]:
        """(image, first feature, first position, count) of each image's placeholder run overlapping
        positions [start, end), clipped to them."""
        found = []
        for image, (offset, length) in enumerate(zip(self.offsets, self.lengths)):
            lo, hi = max(start, offset), min(end, offset + length)
            if lo < hi:
                found.append((image, lo - offset, lo, hi - lo))
        return found

    def span_features(self, image: int, first: int, count: int) -> tuple[list[int], torch.Tensor]:
        """Of run positions [first, first + count) of `image`: those that take a feature (counted from
        `first`), and their features."""
        features = self.features[image]
        if self.row_widths is None:
            return list(range(count)), features[first : first + count]
        row = self.row_widths[image] + 1
        taken = [r for r in range(first, first + count) if r % row != row - 1]
        return [r - first for r in taken], features[[r - r // row for r in taken]]

    def chunk_end(self, start: int, end: int) -> int:
        """Where a prefill chunk over [start, end) may end: before a bidirectional image it would cut,
        or `start` (nothing this step) when it begins inside one and cannot reach its end."""
        if not self.bidirectional:
            return end
        for offset, length in zip(self.offsets, self.lengths):
            if offset < end < offset + length:
                return offset if offset > start else start
        return end

    def key_limits(self, start: int, end: int) -> list[int] | None:
        """The last key each position of [start, end) sees, where a bidirectional image is among them:
        its own position, or its image's last."""
        spans = self.spans(start, end) if self.bidirectional else []
        if not spans:
            return None
        limits = list(range(start, end))
        for image, _, position, count in spans:
            last = self.offsets[image] + self.lengths[image] - 1
            limits[position - start : position - start + count] = [last] * count
        return limits

    def positions(self, start: int, end: int) -> list[list[int]] | None:
        """The three rotary positions of each of [start, end) with multimodal RoPE ([3][end - start]):
        the prompt's as computed, each later token's index plus `rope_delta` on all three; None without."""
        if self.rope_positions is None:
            return None
        prompt = self.rope_positions.shape[1]
        rows = self.rope_positions[:, start:min(end, prompt)].tolist()
        later = list(range(max(start, prompt) + self.rope_delta, end + self.rope_delta))
        return [row + later for row in rows]

    def block_key(self, start: int, end: int) -> tuple[tuple[int, int], ...]:
        """What a KV block over positions [start, end) depends on besides its tokens: the hash of each
        image it covers part of and where in that image the block starts."""
        return tuple((self.hashes[image], feature) for image, feature, _, _ in self.spans(start, end))


def load_image(source: Any) -> Any:
    """A PIL image from a PIL image, bytes, a data: URL, an http(s) URL or a local path; ValueError for
    anything that is not a readable image (or is too large)."""
    from PIL import Image

    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    elif isinstance(source, str) and source.startswith("data:"):
        header, _, payload = source.partition(",")
        if ";base64" not in header:
            raise ValueError("an image data URL must be base64-encoded (data:image/...;base64,...)")
        try:
            data = base64.b64decode(payload, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"the image data URL is not valid base64: {exc}") from None
    elif isinstance(source, str) and source.startswith(("http://", "https://")):
        data = _fetch(source)
    elif isinstance(source, (str, Path)) and not str(source).startswith(("file:", "ftp:")):
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read image {str(source)!r}: {exc.strerror}") from None
    else:
        raise ValueError(f"an image must be a PIL image, bytes, a data: or http(s) URL or a path, not {source!r:.80}")
    if len(data) > MAX_IMAGE_BYTES:
        raise ValueError(f"the image is {len(data)} bytes, more than the {MAX_IMAGE_BYTES} allowed")
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise ValueError(f"the image has {image.width}x{image.height} pixels, more than {MAX_IMAGE_PIXELS}")
        image.load()
    except (OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot decode the image: {exc}") from None
    return image


# Content parts that carry an image in an offline conversation: OpenAI's, and vLLM's PIL forms.
_IMAGE_PARTS = ("image_url", "image_pil", "image")


def conversation_images(conversation: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Any]]:
    """(the conversation as chat templates take it, its images in order): each image part, OpenAI's
    {"type": "image_url", "image_url": {"url": ...}} or vLLM's {"type": "image_pil", "image_pil": ...},
    becomes {"type": "image"}, which the template renders as the image's placeholder."""
    images: list[Any] = []
    rendered = []
    for message in conversation:
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                kind = part.get("type")
                if kind in _IMAGE_PARTS:
                    source = part.get(kind)
                    images.append(source["url"] if isinstance(source, dict) else source)
                    parts.append({"type": "image"})
                else:
                    parts.append(part)
            message = {**message, "content": parts}
        rendered.append(message)
    return rendered, images


def _fetch(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:  # noqa: S310 (http(s) only)
            data = response.read(MAX_IMAGE_BYTES + 1)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot fetch image {url!r}: {exc}") from None
    return data


def image_hash(image: Any) -> int:
    """A content hash of a decoded image (mode, size and pixels), the same for the same picture
    however it arrived (path, bytes, URL)."""
    digest = hashlib.sha256(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return int.from_bytes(digest.digest()[:8], "little")


class ImagePrompts:
    """Expands image placeholders in prompts and makes their pixels, for a model that takes images."""

    def __init__(self, model_config: ModelConfig, tokenizer: Any, limit: int | None = None,
                 processor_kwargs: dict[str, Any] | None = None, step_tokens: int | None = None) -> None:
        self.path = model_config.path
        self.limit = limit  # most images per prompt
        self.step_tokens = step_tokens  # the most tokens one step computes (an image attending both ways: all at once)
        self.processor_kwargs = processor_kwargs or {}
        self.vision: VisionConfig | None = model_config.vision
        self._processor: Any = None
        v = self.vision
        # What surrounds an image's tokens once expanded (Gemma 3's blank lines and begin/end tokens).
        newlines = tokenizer.encode("\n\n", add_special_tokens=False) if v is not None and v.wrap_newlines else []
        self._before = newlines + ([v.begin_id] if v is not None and v.begin_id is not None else [])
        self._after = ([v.end_id] if v is not None and v.end_id is not None else []) + newlines

    def admit(self, count: int) -> None:
        """ValueError unless this model takes `count` images in one prompt: checked before any is fetched."""
        if self.vision is None:
            raise ValueError("this model takes no images (it is served as text)")
        if self.limit is not None and count > self.limit:
            raise ValueError(f"the prompt has {count} images, more than the {self.limit} allowed "
                             "(--limit-mm-per-prompt)")

    def _pixels(self, images: list[Any], request_kwargs: dict[str, Any]) -> _Processed:
        """The images as the model directory's image processor makes them (see _Processed), with a
        request's own processor settings."""
        if self._processor is None:
            from transformers import AutoImageProcessor

            try:
                self._processor = AutoImageProcessor.from_pretrained(str(self.path), local_files_only=True,
                                                                     **self.processor_kwargs)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"the image processor refuses mm_processor_kwargs "
                                 f"{self.processor_kwargs}: {exc}") from exc
        v = self.vision
        # Pixtral's processor sizes images in merged patches (its own processor passes the same).
        extra = {"patch_size": {"height": v.patch_size * v.spatial_merge, "width": v.patch_size * v.spatial_merge}} \
            if v.tower == "pixtral" else {}
        try:
            out = self._processor(images=[image.convert("RGB") for image in images], return_tensors="pt",
                                  **extra, **request_kwargs)
        except Exception as exc:  # the processor raises its own types for odd images
            raise ValueError(f"cannot preprocess the image: {exc}") from exc
        if (sizes := out.get("image_sizes")) is not None:
            return _pixtral_patches(out["pixel_values"], sizes, v.patch_size, v.spatial_merge)
        if (grids := out.get("image_grid_thw")) is not None:
            return _Processed(out["pixel_values"], grids, (grids.prod(dim=1) // v.spatial_merge**2).tolist())
        if (soft := out.get("num_soft_tokens_per_image")) is not None:
            return _gemma4_patches(out["pixel_values"], out["image_position_ids"], [int(n) for n in soft])
        if (tiles := out.get("num_patches")) is not None:
            return _Processed(out["pixel_values"], tiles, (tiles * v.tokens_per_image).tolist())
        return _Processed(out["pixel_values"], None, [v.tokens_per_image] * len(images))

    def _run(self, length: int, row_width: int | None) -> list[int]:
        """An image's run of tokens: its placeholders, each row ended by Pixtral's break tokens where it has rows."""
        v = self.vision
        if row_width is None:
            return [v.image_token_id] * length
        run = ([v.image_token_id] * row_width + [v.row_break_id]) * (length // (row_width + 1))
        run[-1] = v.last_break_id
        return run

    def process(self, token_ids: list[int], images: list[Any],
                processor_kwargs: dict[str, Any] | None = None) -> tuple[list[int], ImageInputs]:
        """(token ids with each image's placeholder expanded, the images' inputs). The prompt holds one
        placeholder per image, or the expanded runs already; anything else is a ValueError.
        `processor_kwargs`: this request's image processor settings (vLLM's per-request
        mm_processor_kwargs, e.g. Qwen-VL's max_pixels); they key the images' KV blocks too."""
        self.admit(len(images))
        if processor_kwargs is not None and not isinstance(processor_kwargs, dict):
            raise ValueError(f"mm_processor_kwargs must be an object, got {processor_kwargs!r:.80}")
        _check_processor_sizes(processor_kwargs or {})
        v = self.vision
        token = v.image_token_id
        loaded = [load_image(image) for image in images]
        processed = self._pixels(loaded, processor_kwargs or {})
        if v.bidirectional and self.step_tokens is not None and max(processed.lengths) > self.step_tokens:
            raise ValueError(f"an image of {max(processed.lengths)} tokens attends to itself both ways and must be "
                             f"computed in one step: more than max_num_batched_tokens ({self.step_tokens}); "
                             "send a smaller image or lower the image processor's token budget")
        runs = [self._run(length, width) for length, width in
                zip(processed.lengths, processed.row_widths or [None] * len(loaded))]
        count = token_ids.count(v.placeholder_id)
        offsets = _expanded_offsets(token_ids, token, runs)
        if offsets is not None:
            expanded = list(token_ids)
        elif count == len(loaded):
            expanded, offsets = [], []
            runs_left = iter(runs)
            for t in token_ids:
                if t == v.placeholder_id:
                    expanded.extend(self._before)
                    offsets.append(len(expanded))
                    expanded.extend(next(runs_left) + self._after)
                else:
                    expanded.append(t)
        else:
            raise ValueError(f"the prompt has {count} image placeholder tokens for {len(loaded)} images: "
                             "put one per image where it belongs")
        # The same picture processed otherwise is other features: its blocks must not be shared.
        settings = json.dumps(processor_kwargs, sort_keys=True, default=str) if processor_kwargs else None
        hashes = [image_hash(image) if settings is None else hash((image_hash(image), settings)) for image in loaded]
        inputs = ImageInputs(processed.pixels, offsets, processed.lengths, hashes,
                             bidirectional=v.bidirectional, grids=processed.grids, row_widths=processed.row_widths)
        if v.mrope:
            inputs.rope_positions, inputs.rope_delta = mrope_positions(len(expanded), offsets, processed.grids,
                                                                       v.spatial_merge)
        return expanded, inputs


def _check_processor_sizes(settings: dict[str, Any]) -> None:
    """ValueError for a request's processor setting (nested ones too) past the pixels a request may make
    the server decode: a `min_pixels` of 10^8 would have it resize any image to gigabytes of pixels."""
    for name, value in settings.items():
        if isinstance(value, dict):
            _check_processor_sizes(value)
        elif isinstance(value, (int, float)) and value > MAX_IMAGE_PIXELS:
            raise ValueError(f"mm_processor_kwargs {name}={value} is more than the {MAX_IMAGE_PIXELS} pixels allowed")


def _expanded_offsets(token_ids: list[int], token: int, runs: list[list[int]]) -> list[int] | None:
    """Where each image's run starts, if the prompt holds the runs already expanded (each as its tokens
    would be, in order); None otherwise (one placeholder per image, when no run is longer than one)."""
    if sum(run.count(token) for run in runs) != token_ids.count(token) or max(map(len, runs), default=0) < 2:
        return None
    offsets, at = [], 0
    for run in runs:
        at = token_ids.index(token, at)
        if token_ids[at : at + len(run)] != run:
            return None
        offsets.append(at)
        at += len(run)
    return offsets


class _Processed(NamedTuple):
    """What the image processor made of a prompt's images: the pixels (per image [3, H, W]; Qwen-VL's and
    Pixtral's patches of every image [patches, 3 * T * P * P]; InternVL's tiles), each image's layout
    (Qwen-VL's patch grid (temporal, height, width); InternVL's tile count; Pixtral's and Gemma 4's patch
    grid (height, width)), each image's run length and, for Pixtral, its features per row."""

    pixels: torch.Tensor
    grids: torch.Tensor | None
    lengths: list[int]
    row_widths: list[int] | None = None


def _pixtral_patches(pixels: torch.Tensor, sizes: torch.Tensor, patch: int, merge: int) -> _Processed:
    """Pixtral's padded batch [images, 3, H, W] with each image's own size -> every image's patches,
    row-major, flattened as its convolution's weight is ([patches, 3 * P * P]), and its run: a row of
    features per merge rows of patches, each row followed by its break token."""
    chunks, grids, lengths, widths = [], [], [], []
    for image, (height, width) in zip(pixels, sizes.tolist()):
        rows, columns = height // patch, width // patch
        grid = image[:, : rows * patch, : columns * patch].reshape(3, rows, patch, columns, patch)
        chunks.append(grid.permute(1, 3, 0, 2, 4).reshape(rows * columns, -1))
        grids.append((rows, columns))
        widths.append(columns // merge)
        lengths.append(rows // merge * (columns // merge + 1))
    return _Processed(torch.cat(chunks), torch.tensor(grids), lengths, widths)


def _gemma4_patches(pixels: torch.Tensor, positions: torch.Tensor, lengths: list[int]) -> _Processed:
    """Gemma 4's batch of patches [images, max_patches, 3 * P * P], each image's padded past its own with
    position (-1, -1) -> every image's real patches (row-major, as its processor lays them) and its grid of
    (rows, columns) patches, which the tower rebuilds the positions from."""
    chunks, grids = [], []
    for image, where in zip(pixels, positions):
        real = (where >= 0).all(dim=-1)
        columns, rows = (int(v) + 1 for v in where[real].amax(dim=0).tolist())
        if int(real.sum()) != rows * columns:
            raise ValueError("Gemma 4's image processor gave patches that do not fill a grid")
        chunks.append(image[real])
        grids.append((rows, columns))
    return _Processed(torch.cat(chunks), torch.tensor(grids), lengths)


def mrope_positions(num_tokens: int, offsets: list[int], grids: torch.Tensor,
                    merge: int) -> tuple[torch.Tensor, int]:
    """Qwen2-VL's multimodal rotary positions of a prompt, [3, num_tokens] (temporal, height, width),
    and the delta of the tokens after it. Text counts up on all three; an image's features, row-major
    over its merged grid, sit at (p, p + row, p + column) from the position p it starts at, and the
    text after it resumes at p + max(rows, columns)."""
    positions = torch.empty(3, num_tokens, dtype=torch.long)
    index, next_position = 0, 0
    for offset, (frames, height, width) in zip(offsets, grids.tolist()):
        text = offset - index
        positions[:, index:offset] = torch.arange(next_position, next_position + text)
        start = next_position + text
        rows, columns = height // merge, width // merge
        t, h, w = torch.meshgrid(torch.arange(frames), torch.arange(rows), torch.arange(columns), indexing="ij")
        length = frames * rows * columns
        positions[:, offset : offset + length] = torch.stack([t, h, w]).reshape(3, -1) + start
        index, next_position = offset + length, start + max(rows, columns)
    positions[:, index:] = torch.arange(next_position, next_position + num_tokens - index)
    return positions, int(positions.max()) + 1 - num_tokens if num_tokens else 0
