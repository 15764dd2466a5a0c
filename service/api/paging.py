"""Opaque page tokens: a store's cursor (where the last page ended), base64url-wrapped.

A list that pages takes ``limit`` and ``page_token`` and answers ``next_page_token``
(None on the last page). The token is opaque to clients: they send back what they got."""

from __future__ import annotations

import base64
import binascii

from service.errors import InvalidInput

PAGE_TOKEN_MAX = 512


def encode_page_token(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    return base64.urlsafe_b64encode(cursor.encode()).decode().rstrip("=")


def decode_page_token(token: str | None) -> str | None:
    """The cursor a token carries; InvalidInput (field ``page_token``) for one we never gave."""
    if token is None:
        return None
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidInput(
            "page_token is not one this server gave out: send the next_page_token of the previous page, "
            "or none for the first page",
            field="page_token",
        ) from None
