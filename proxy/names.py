"""Generated endpoint names: readable, and unguessable (they appear in host names).

``quiet-river-k3x9q2``: two words for people, then 6 random base-36 characters
(31 bits) from ``secrets`` so that names cannot be enumerated.
"""

from __future__ import annotations

import secrets
from typing import Final

__all__ = ["generate_endpoint_name"]

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
