"""Trigger words of a LoRA, read from its own safetensors header (no tensors loaded, nothing unpickled).

A safetensors file starts with an 8-byte little-endian header length and a JSON header whose optional
`__metadata__` maps strings to strings. Trainers write what the LoRA was trained on there:
- `modelspec.trigger_phrase` (the SAI model spec; OneTrainer, kohya sd-scripts with --metadata_trigger_phrase),
  and the non-standard `trigger_phrase` / `trigger_words` / `activation_text` some tools and converters write;
- kohya sd-scripts: `ss_tag_frequency` ({dataset dir: {caption tag: count}}) and `ss_dataset_dirs`, whose
  directory names follow the "<repeats>_<instance token> <class>" convention, so the instance token is the trigger;
- `modelspec.tags` / `ss_output_name` / `modelspec.title`: what the file calls itself (shown, not used as triggers).

Explicit trigger phrases win; without them, the dataset-dir instance tokens and the most frequent caption tags are
the best guess a trainer left behind.
"""
from __future__ import annotations

import json
import os
import re
import struct
from collections import Counter

#: A header larger than this is not a LoRA header (guards against reading a huge file into memory).
MAX_HEADER_BYTES = 64 * 2**20
#: How many of the most frequent caption tags to offer when no explicit trigger phrase exists.
TOP_TAGS = 5
EXPLICIT_KEYS = ("modelspec.trigger_phrase", "trigger_phrase", "trigger_words", "ss_trigger_words", "activation_text")
NAME_KEYS = ("ss_output_name", "modelspec.title", "name")


class MetadataError(ValueError):
    pass


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The `__metadata__` of a safetensors file ({} when it has none). Reads only the header."""
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) != 8:
            raise MetadataError(f"{os.fspath(path)}: too short to be a safetensors file")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES:
            raise MetadataError(f"{os.fspath(path)}: header of {length} bytes is not a safetensors header")
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MetadataError(f"{os.fspath(path)}: header is not JSON ({exc})") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        return {}
    return {str(k): v for k, v in metadata.items() if isinstance(v, str)}


def _split_phrases(text: str) -> list[str]:
    text = text.strip()
    if text.startswith("["):          # some tools store a JSON list
        try:
            items = json.loads(text)
            if isinstance(items, list):
                return [str(i).strip() for i in items if str(i).strip()]
        except json.JSONDecodeError:
            pass
    return [part.strip() for part in re.split(r"[,\n]", text) if part.strip()]


def _json_field(metadata: dict, key: str):
    try:
        return json.loads(metadata[key]) if key in metadata else None
    except json.JSONDecodeError:
        return None


def _dataset_tokens(metadata: dict) -> list[str]:
    """Instance tokens from kohya dataset dir names "<repeats>_<token> [class]" (in ss_dataset_dirs or the
    ss_tag_frequency keys)."""
    dirs = _json_field(metadata, "ss_dataset_dirs")
    names = list(dirs) if isinstance(dirs, dict) else []
    frequency = _json_field(metadata, "ss_tag_frequency")
    if isinstance(frequency, dict):
        names += [n for n in frequency if n not in names]
    tokens = []
    for name in names:
        match = re.match(r"^\d+_(.+)$", os.path.basename(str(name).rstrip("/\\")))
        if match:
            token = match.group(1).strip().split(" ")[0]
            if token:
                tokens.append(token)
    return tokens


def _top_tags(metadata: dict, count: int) -> list[str]:
    frequency = _json_field(metadata, "ss_tag_frequency")
    totals: Counter = Counter()
    if isinstance(frequency, dict):
        for tags in frequency.values():
            if isinstance(tags, dict):
                for tag, n in tags.items():
                    if isinstance(n, (int, float)) and str(tag).strip():
                        totals[str(tag).strip()] += n
    # Most frequent first; ties in name order so the result does not depend on dict order.
    return [tag for tag, _ in sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:count]]


def _unique(words) -> list[str]:
    seen, result = set(), []
    for word in words:
        key = word.casefold()
        if key not in seen:
            seen.add(key)
            result.append(word)
    return result


def trigger_words_from_metadata(metadata: dict[str, str], top_tags: int = TOP_TAGS) -> dict:
    """{"trigger_words": [...], "source": "explicit" | "training tags" | "none", "title": str, "tags": [...]}."""
    explicit = [p for key in EXPLICIT_KEYS if metadata.get(key) for p in _split_phrases(metadata[key])]
    if explicit:
        words, source = _unique(explicit), "explicit"
    else:
        words = _unique(_dataset_tokens(metadata) + _top_tags(metadata, top_tags))
        source = "training tags" if words else "none"
    title = next((metadata[k].strip() for k in NAME_KEYS if metadata.get(k, "").strip()), "")
    tags = _split_phrases(metadata.get("modelspec.tags", ""))
    return {"trigger_words": words, "source": source, "title": title, "tags": tags}


def trigger_words(path: str | os.PathLike, top_tags: int = TOP_TAGS) -> dict:
    """Trigger words of the LoRA file at `path` (see trigger_words_from_metadata)."""
    return trigger_words_from_metadata(read_metadata(path), top_tags)


def join_trigger_words(groups) -> str:
    """Comma-joined, each word once (case-insensitive), in order: what the node's STRING output carries."""
    return ", ".join(_unique(word for group in groups for word in group if word))
