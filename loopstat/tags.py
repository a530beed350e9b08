"""Tags: parsed from arguments and environment, made safe for the wire once."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Dict, Union

log = logging.getLogger("loopstat")

TagValue = Union[str, int, float]
TagsArg = Union[Mapping[str, TagValue], Iterable[str], None]
Tags = Dict[str, str]

# What the official Datadog client keeps; everything else becomes "_". This
# covers every byte that has a meaning in a DogStatsD line (| # , @ : and line
# breaks) as well as the ones Graphite tagged series reserve (; = ~ !).
_VALUE_UNSAFE = re.compile(r"[^\w\-:./]")
_KEY_UNSAFE = re.compile(r"[^\w\-./]")

# Datadog cuts a tag at 200 characters; cutting it here keeps what is sent
# and what is graphed the same.
MAX_TAG_LENGTH = 200

_ACCEPTED = 'a mapping of str to str/int/float, or an iterable of "key:value" strings'


def sanitize(key: str, value: str) -> tuple[str, str]:
    """Return the tag with every character that could alter the line replaced by "_"."""
    return _KEY_UNSAFE.sub("_", key), _VALUE_UNSAFE.sub("_", value)


def _pair(key: object, value: object, source: str) -> tuple[str, str]:
    if not isinstance(key, str):
        raise ValueError(f"{source}: tag keys must be str, got {type(key).__name__} ({_ACCEPTED})")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(
            f"{source}: tag {key!r} has a value of type {type(value).__name__}; "
            f"values must be str, int or float ({_ACCEPTED})"
        )
    text = str(value)
    if not key or not text:
        raise ValueError(f"{source}: tag {key!r}:{text!r} needs a non-empty key and value")
    return key, text


def _split(tag: object, source: str) -> tuple[str, str]:
    if not isinstance(tag, str):
        raise ValueError(f'{source}: tags must be "key:value" strings, got {type(tag).__name__} ({_ACCEPTED})')
    key, sep, value = tag.partition(":")
    if not sep:
        raise ValueError(f'{source}: tag {tag!r} is not of the form "key:value"')
    return _pair(key, value, source)


def parse(tags: object, source: str = "tags") -> Tags:
    """Turn a tags argument into an ordered dict; the last value given for a key wins."""
    if tags is None:
        return {}
    if isinstance(tags, (str, bytes)):
        raise ValueError(f"{source}: got a single {type(tags).__name__}; expected {_ACCEPTED}")
    if isinstance(tags, Mapping):
        pairs = [_pair(k, v, source) for k, v in tags.items()]
    elif isinstance(tags, Iterable):
        pairs = [_split(tag, source) for tag in tags]
    else:
        raise ValueError(f"{source}: got {type(tags).__name__}; expected {_ACCEPTED}")
    return dict(pairs)


def parse_env(text: str, variable: str) -> Tags:
    """Parse DD_TAGS-style text: "key:value" items separated by commas or spaces."""
    return parse([item for item in re.split(r"[,\s]+", text) if item], variable)


def render(tags: Tags, budget: int) -> Tags:
    """Sanitize and bound tags so that every line stays one well-formed datagram.

    Tags that would push a line past ``budget`` bytes are dropped, last first,
    with one warning: a cut tag set still parses, a split line would not.
    """
    safe: Tags = {}
    used = 0
    dropped: list[str] = []
    for raw_key, raw_value in tags.items():
        key, value = sanitize(raw_key, raw_value)
        if len(key) + 1 + len(value) > MAX_TAG_LENGTH:
            log.warning("loopstat: tag %r is longer than %d characters; cut", key, MAX_TAG_LENGTH)
            value = value[: max(1, MAX_TAG_LENGTH - len(key) - 1)]
            key = key[: MAX_TAG_LENGTH - 2]
        size = len(key.encode()) + 1 + len(value.encode()) + (1 if safe else 0)
        if used + size > budget:
            dropped.append(key)
            continue
        safe[key] = value
        used += size
    if dropped:
        log.warning(
            "loopstat: tags %s dropped: together the tags exceed the %d bytes a datagram has room for",
            ", ".join(dropped),
            budget,
        )
    return safe
