"""Tags: parsed from arguments and environment, made safe for the wire once.

A tag is ``key:value`` or a bare ``key`` (Datadog's value-less tag, as in
``DD_TAGS="env:prod,canary"``); in the ``Tags`` pairs a bare key has the value "".
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import List, Tuple, Union

log = logging.getLogger(__name__)

TagValue = Union[str, int, float]
TagsArg = Union[Mapping[str, TagValue], Iterable[str], None]
#: ``(key, value)`` pairs in order; value "" for a tag without value.
Tags = List[Tuple[str, str]]

# What the official Datadog client keeps; everything else becomes "_". This
# covers every byte that has a meaning in a DogStatsD line (| # , @ : and line
# breaks) as well as the ones Graphite tagged series reserve (; = ~ !).
_VALUE_UNSAFE = re.compile(r"[^\w\-:./]")
_KEY_UNSAFE = re.compile(r"[^\w\-./]")

# Datadog cuts a tag at 200 characters; cutting it here keeps what is sent
# and what is graphed the same.
MAX_TAG_LENGTH = 200

# A warning names at most this many tags, each cut to this many characters,
# and counts the rest: 10,000 bad tags make one short line, not 88 KB of log.
LISTED = 5
SHOWN_CHARACTERS = 40

#: What a tags argument may be.
ACCEPTED = 'a mapping of str to str/int/float, or an iterable of "key:value" or "key" strings'


def show(value: object, width: int = SHOWN_CHARACTERS) -> str:
    """``repr(value)``, cut to about ``width`` characters: error and log messages stay one short line."""
    if isinstance(value, int) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"  # repr() refuses past 4,300 digits
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__ must not replace the error it explains
        return f"a {type(value).__name__}"
    if len(text) <= width:
        return text
    size = len(value) if isinstance(value, (str, bytes)) else len(text)
    return f"{text[:width]}… ({size} characters)"


def listing(items: Sequence[str]) -> str:
    """The first few ``items`` (each cut), then how many were left out."""
    shown = ", ".join(items[:LISTED])
    more = len(items) - LISTED
    return f"{shown} and {more} more" if more > 0 else shown


def sanitize(key: str, value: str) -> tuple[str, str]:
    """Return the tag with every character that could alter the line replaced by "_"."""
    return _KEY_UNSAFE.sub("_", key), _VALUE_UNSAFE.sub("_", value)


def _letter_first(key: str) -> str:
    # Strict DogStatsD parsers reject a whole line whose tag key does not start
    # with a letter; the Datadog agent itself trims such leading characters.
    for index, char in enumerate(key):
        if char.isalpha():
            return key[index:]
    return ""


def _pair(key: object, value: object, source: str) -> tuple[str, str]:
    if not isinstance(key, str):
        raise ValueError(f"{source}: tag keys must be str, got {type(key).__name__} ({ACCEPTED})")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(
            f"{source}: tag {show(key)} has a value of type {type(value).__name__}; "
            f"values must be str, int or float ({ACCEPTED})"
        )
    text = str(value)
    if not key or not text:
        raise ValueError(f"{source}: tag {show(key)}:{show(text)} needs a non-empty key and value")
    return key, text


def _split(tag: object, source: str) -> tuple[str, str]:
    if not isinstance(tag, str):
        raise ValueError(f"{source}: tags must be strings, got {type(tag).__name__} ({ACCEPTED})")
    key, sep, value = tag.partition(":")
    if not sep:
        if not tag:
            raise ValueError(f"{source}: a tag is empty; expected {ACCEPTED}")
        return tag, ""
    if not key or not value:
        raise ValueError(
            f"{source}: tag {show(tag)} needs a non-empty key and value, or no ':' for a tag without value"
        )
    return key, value


def parse(tags: object, source: str = "tags") -> Tags:
    """Check a tags argument and return its pairs in order."""
    if tags is None:
        return []
    if isinstance(tags, (str, bytes)):
        raise ValueError(f"{source}: got a single {type(tags).__name__}; expected {ACCEPTED}")
    if isinstance(tags, Mapping):
        return [_pair(k, v, source) for k, v in tags.items()]
    if isinstance(tags, Iterable):
        return [_split(tag, source) for tag in tags]
    raise ValueError(f"{source}: got {type(tags).__name__}; expected {ACCEPTED}")


def split_env(text: str, variable: str) -> List[str]:
    """Check DD_TAGS-style text ("key:value" or "key" items separated by commas or spaces); return the items."""
    items = [item for item in re.split(r"[,\s]+", text) if item]
    parse(items, variable)
    return items


def _clean(key: str, value: str) -> tuple[str, str, bool, bool]:
    """The tag as sent, whether its key lost leading characters, and whether it was cut."""
    key, value = sanitize(key, value)
    lettered = _letter_first(key)
    moved = lettered != key
    key = lettered
    cut = len(key) + (1 + len(value) if value else 0) > MAX_TAG_LENGTH
    if cut and value:
        value = value[: max(1, MAX_TAG_LENGTH - len(key) - 1)]
        key = key[: MAX_TAG_LENGTH - 2]
    return key[:MAX_TAG_LENGTH], value, moved, cut


def render(sources: Sequence[Tags], budget: int) -> Tags:
    """Merge tag sources (strongest first), sanitize them and bound them to ``budget`` bytes.

    Keys are compared once cleaned and lowercased, as Datadog lowercases them:
    ``{"my team": …}`` and ``DD_TAGS=my_team:…`` are one key, and the stronger
    source keeps it (within one source, the last value wins). Tags that would
    push a line past ``budget`` bytes are dropped, last first: a cut tag set
    still parses, a split line would not. Each kind of change is logged once,
    in one bounded line.
    """
    merged: dict[str, tuple[str, str]] = {}
    renamed: List[str] = []
    removed: List[str] = []
    cut: List[str] = []
    replaced: List[str] = []
    for source in sources:
        own: dict[str, tuple[str, str]] = {}
        for raw_key, raw_value in source:
            key, value, moved, was_cut = _clean(raw_key, raw_value)
            safe_key, safe_value = sanitize(raw_key, raw_value)
            # A key that lost its leading characters is reported below, with what it became.
            if key and (safe_value != raw_value or (safe_key != raw_key and not moved)):
                replaced.append(show(joined([(raw_key, raw_value)])))
            if not key:
                removed.append(show(raw_key))
                continue
            if moved:
                renamed.append(f"{show(raw_key)} as {show(key)}")
            if was_cut:
                cut.append(show(key))
            own[key.lower()] = (key, value)
        for identity, pair in own.items():
            merged.setdefault(identity, pair)

    safe: Tags = []
    used = 0
    dropped: List[str] = []
    for key, value in merged.values():
        size = len(key.encode()) + (1 + len(value.encode()) if value else 0) + (1 if safe else 0)
        if used + size > budget:
            dropped.append(show(key))
            continue
        safe.append((key, value))
        used += size

    if replaced:
        log.warning(
            "loopstat: characters other than letters, digits, '_-./' (and ':' in values) became '_' in tags: %s",
            listing(replaced),
        )
    if renamed or removed:
        log.warning(
            "loopstat: tag keys must start with a letter: sent %s; dropped %s",
            listing(renamed) or "none",
            listing(removed) or "none",
        )
    if cut:
        log.warning("loopstat: %d tags longer than %d characters were cut: %s", len(cut), MAX_TAG_LENGTH, listing(cut))
    if dropped:
        log.warning(
            "loopstat: %d tags dropped, as together the tags exceed the %d bytes a datagram has room for: %s",
            len(dropped),
            budget,
            listing(dropped),
        )
    return safe


def joined(tags: Iterable[Tuple[str, str]]) -> str:
    """The tags as a DogStatsD line carries them after ``|#``: ``env:prod,canary``."""
    return ",".join(f"{key}:{value}" if value else key for key, value in tags)
