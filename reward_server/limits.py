"""Request-size limits: the body cap (services.core.http_limits, before parsing) and the batch and string caps (413)."""

from __future__ import annotations

from collections.abc import Iterable

from reward_server.errors import PayloadTooLargeError
from services.core.http_limits import BodyLimitMiddleware

__all__ = ["BodyLimitMiddleware", "check_batch_size", "check_text_lengths"]


def check_batch_size(count: int, max_items: int) -> None:
    if count > max_items:
        raise PayloadTooLargeError(f"{count} items in one request exceeds max_items={max_items}; split the batch")


def check_text_lengths(fields: Iterable[tuple[str, str | None]], max_text_chars: int) -> None:
    """`fields` are (location, text) pairs such as ("items.3.response", "..."); the first too long raises."""
    for location, text in fields:
        if text is not None and len(text) > max_text_chars:
            raise PayloadTooLargeError(
                f"{location} has {len(text)} characters, more than max_text_chars={max_text_chars}"
            )
