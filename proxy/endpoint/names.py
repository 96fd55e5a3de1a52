"""Endpoint names: what a valid one is, and generated ones that are readable and
unguessable (they appear in host names).

``quiet-river-k3x9q2``: two words for people, then 6 random base-36 characters
(31 bits) from ``secrets`` so that names cannot be enumerated.
"""

from __future__ import annotations

import re
import secrets
from typing import Final, NewType

__all__ = [
    "ENDPOINT_NAME_PATTERN",
    "EndpointName",
    "generate_endpoint_name",
    "is_valid_endpoint_name",
]

EndpointName = NewType("EndpointName", str)
#: Endpoint names appear in DNS host names, so they are DNS labels (RFC 1123), lowercase.
ENDPOINT_NAME_PATTERN: Final = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def is_valid_endpoint_name(name: str) -> bool:
    """True when ``name`` can be an endpoint name (a lowercase DNS label)."""
    return bool(ENDPOINT_NAME_PATTERN.fullmatch(name))


_ADJECTIVES: Final = (
    "amber",
    "bold",
    "brisk",
    "calm",
    "clear",
    "cool",
    "crisp",
    "dawn",
    "deep",
    "eager",
    "fair",
    "fast",
    "gentle",
    "glad",
    "green",
    "keen",
    "light",
    "lucky",
    "mellow",
    "misty",
    "noble",
    "proud",
    "quick",
    "quiet",
    "rapid",
    "silent",
    "solid",
    "steady",
    "still",
    "sunny",
    "swift",
    "tidy",
    "vivid",
    "warm",
    "wild",
    "wise",
)
_NOUNS: Final = (
    "bay",
    "brook",
    "cedar",
    "cliff",
    "cloud",
    "creek",
    "dune",
    "field",
    "fjord",
    "forest",
    "glade",
    "grove",
    "harbor",
    "hill",
    "lake",
    "leaf",
    "meadow",
    "mesa",
    "moon",
    "oak",
    "peak",
    "pine",
    "pond",
    "rain",
    "reef",
    "ridge",
    "river",
    "shore",
    "sky",
    "snow",
    "star",
    "stone",
    "sun",
    "tide",
    "valley",
    "wave",
)
_ALPHABET: Final = "0123456789abcdefghijklmnopqrstuvwxyz"
_SUFFIX_LENGTH: Final = 6


def generate_endpoint_name() -> str:
    """A fresh name like ``quiet-river-k3x9q2`` (a valid DNS label)."""
    suffix = "".join(secrets.choice(_ALPHABET) for _ in range(_SUFFIX_LENGTH))
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}-{suffix}"
