"""uvicorn's httptools protocol with a deadline for request headers (uvicorn has none: a
client that never finishes its headers holds a connection, and a file descriptor, forever).

The ONE module that touches uvicorn internals; tests/security/test_connections.py names
each of them: ``HttpToolsProtocol.__init__(config, server_state, app_state, _loop)``, its
``loop``, ``transport`` and ``pipeline`` attributes, and its parser and cycle callbacks
``on_headers_complete`` and ``on_response_complete``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """Closes a connection whose request headers are not complete ``header_timeout`` seconds
    after it opened or after its previous response ended (keep-alive).

    uvicorn's keep-alive timer still closes an idle connection sooner (it is cancelled by the
    first byte of a next request; from there this deadline holds).
    """

    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        waiting = not self.pipeline  # a pipelined request already has its headers
        super().on_response_complete()
        if waiting and not self.transport.is_closing():
            self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self.header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _headers_too_slow(self) -> None:
        self.header_timer = None
        if not self.transport.is_closing():
            log.debug("closing a connection: request headers not complete within %ss", self.header_timeout)
            self.transport.close()


def protocol_factory(header_timeout: float) -> Callable[..., asyncio.Protocol]:
    """What ``uvicorn.Config(http=...)`` gets: uvicorn only calls it with the protocol's
    arguments, and a partial of a module-level class pickles into spawned workers."""
    return functools.partial(HeaderTimeoutProtocol, header_timeout=header_timeout)
