"""Text from visitors, before it reaches a model, the database or a page.

Control characters and Unicode direction overrides are removed (with a notice), never stored raw: a
bidi override in a saved prompt would reorder how History shows it to the next visitor, and C0/C1
controls mean nothing to a model. Tab, newline and carriage return stay. A lone surrogate cannot be
encoded as UTF-8 at all (the tokenizer, JSON and the database would fail on it later), so text
holding one is refused with a message instead of silently repaired.
"""

from __future__ import annotations

import re

# C0 controls but tab, newline and CR; DEL and the C1 block; the bidi embeddings, overrides and isolates.
REMOVED = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
SURROGATE = re.compile("[\ud800-\udfff]")


class UnsafeText(ValueError):
    """Text that cannot be kept at all (a lone surrogate); the message names the field and the position."""


def clean(text: str, field: str) -> tuple[str, str | None]:
    """(cleaned text, a notice saying what was removed, or None). Raises UnsafeText on a lone surrogate."""
    bad = SURROGATE.search(text)
    if bad:
        raise UnsafeText(f"{field} holds a lone surrogate (U+{ord(bad.group()):04X}) at character {bad.start()}: "
                         "it is not valid Unicode text; remove it and send again.")
    cleaned, removed = REMOVED.subn("", text)
    if not removed:
        return text, None
    return cleaned, (f"{removed} control or direction-override character{'s' if removed > 1 else ''} "
                     f"removed from {field}.")
