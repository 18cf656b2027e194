"""How a file name is shown to people: one unambiguous line of valid UTF-8.

Names are bytes on Linux and need not be UTF-8. Every message that names a path (an error,
a warning, a listing for people) goes through `shown`, so that a name with an undecodable
byte or a newline can neither break a line apart nor reach a protobuf string field, which
accepts only valid UTF-8. Undecodable bytes and control characters are escaped as `ls -b`
does (\\xNN, \\n, \\t, \\r) and a backslash is doubled, so no two names look alike.
"""

from __future__ import annotations

import os

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def shown(path: bytes | str) -> str:
    """`path` (bytes, or a str from os.fsdecode) as people see it; always valid UTF-8."""
    text = os.fsdecode(path) if isinstance(path, bytes) else path
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF:  # an undecodable byte (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F or 0xD800 <= code <= 0xDFFF:
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def text_safe(message: str) -> str:
    """A message for a protobuf string field: unchanged when it is valid UTF-8, otherwise
    with each undecodable byte (a lone surrogate) written as \\xNN."""
    try:
        message.encode("utf-8")
        return message
    except UnicodeEncodeError:
        return "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF
                       else (f"\\u{ord(c):04x}" if 0xD800 <= ord(c) <= 0xDFFF else c) for c in message)
