"""Text checks shared by the normalizers, the schema guard and the plugin output."""

from __future__ import annotations


def is_text(value: str) -> bool:
    """Whether ``value`` can be written as UTF-8: JSON may carry lone surrogates (``"\\ud800"``),
    which no store, label or HTTP response can hold."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
