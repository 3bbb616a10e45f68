"""Client-supplied values made safe to put in an error message or a log line.

A job id, a command, a certificate's CN or a page token comes from the
client and may be megabytes long or hold newlines and terminal escapes.
`shown` cuts it to `SHOWN_CHARS` characters (with "…" and the full length)
and escapes every non-printable character, so one call can add at most a
few hundred bytes to a message or the log, and cannot forge a log line.
`printable` escapes without cutting (the CLI's output to a terminal).
"""

from __future__ import annotations

SHOWN_CHARS = 200
ELLIPSIS = "…"


def printable(text: str) -> str:
    """`text` with every non-printable character escaped: ESC as "\\x1b".

    Control characters (C0, DEL, C1) become "\\xXX", other non-printable
    ones (line and paragraph separators, bidirectional overrides, unassigned
    code points) "\\uXXXX"; everything else, spaces included, is kept.
    """
    if text.isprintable():
        return text
    return "".join(_escape(char) for char in text)


def _escape(char: str) -> str:
    if char.isprintable():
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def shown(
    value: str | bytes, limit: int = SHOWN_CHARS, *, head_of: str | None = None
) -> str:
    """`value` cut to `limit` characters, non-printable ones escaped.

    Bytes are decoded as UTF-8 (invalid bytes as \\xNN). A cut value ends
    with "…" and says how long the whole was, e.g. "aaaa… (4194304 bytes)".
    `head_of` says that `value` is already only the start of a larger whole,
    and describes that whole ("3 arguments, 1048576 bytes").
    """
    if isinstance(value, bytes):
        # Only the head is decoded: an escape is at most 4 characters a byte.
        head: str | bytes = value[: limit + 4]
        text = value[: limit + 4].decode("utf-8", "backslashreplace")
        whole = f"{len(value)} bytes"
    else:
        head = text = value[: limit + 1]
        whole = f"{len(value)} chars"
    out: list[str] = []
    used = 0
    for char in text:
        piece = _escape(char)
        used += len(piece)
        if used > limit:
            return "".join(out) + f"{ELLIPSIS} ({head_of or whole})"
        out.append(piece)
    if head_of is not None or len(head) < len(value):
        return "".join(out) + f"{ELLIPSIS} ({head_of or whole})"
    return "".join(out)
