"""Connection-level bounds for uvicorn: slow request heads, idle connections, a connection cap.

uvicorn 0.54 bounds an idle keep-alive connection (``timeout_keep_alive``, armed after each
response) but nothing else about a connection that has not sent a complete request head:
a fresh connection that sends nothing, or a few bytes of a request line now and then
(slowloris), is held for ever, and every byte received cancels the keep-alive timer. Its
``limit_concurrency`` answers 503 in ``text/plain`` to *every* connection once as many are
open, so a flood of silent connections refuses the established clients too.

:class:`LimitedH11Protocol` (h11; uvicorn's ``auto`` picks httptools when it is installed,
so :func:`uvicorn_limits` pins this class whatever is installed) adds:

* a **head timer**, ``SHARPCXR_HEADER_TIMEOUT_S``: armed when the connection is made and
  when the first byte of a later request head arrives (between requests the keep-alive
  timer bounds an idle connection), and after a response whose request body was not read
  (an early 401, 413, 429: the client has that long to finish sending it and the next
  head). It is not re-armed by more bytes: the head must be complete by the deadline. It is
  cancelled once a head is complete; the app bounds the body (``read_limited``'s
  ``SHARPCXR_UPLOAD_IDLE_TIMEOUT_S``). On expiry the connection is closed, after a JSON
  408 when part of a head had arrived.
* **admission**, ``SHARPCXR_MAX_CONNECTIONS`` (uvicorn's ``limit_concurrency``, read from
  the config and taken over from uvicorn's own check): the first ``max_connections`` open
  connections are admitted; a request on any other connection, or arriving while more
  than ``max_connections`` requests are in progress (a request keeps running after its
  client left), gets the service's JSON 503 ``overloaded`` with ``Retry-After`` and
  ``Connection: close``, so established clients keep being served during a flood.

The 503 and 408 written here bypass the app, so they are not in the request metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import Any, ClassVar

import h11
from uvicorn._types import ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from service.errors import error_body
from service.settings import Settings

log = logging.getLogger("sharpcxr.service.http")

#: the longest request head (request line and headers) h11 buffers, bytes; past it the
#: request is answered 400. nginx's default (4 x 8 KiB), room for browsers' cookies.
MAX_HEAD_BYTES = 32 * 1024
#: bounds of the kernel's queue of connections not yet accepted: about max_connections,
#: but never so short that a burst of connects is dropped (clients retry a SYN after 1 s)
MIN_BACKLOG, MAX_BACKLOG = 128, 2048
#: seconds a client is asked to wait after a connection-limit 503
RETRY_AFTER_S = 1


def _timeout_response(header_timeout_s: float) -> bytes:
    """The bytes of a JSON 408 that closes: written raw, as no request exists for h11."""
    message = (
        f"the request head did not arrive within {header_timeout_s:g} s "
        "(SHARPCXR_HEADER_TIMEOUT_S); send the request line and headers at once"
    )
    body = json.dumps(error_body("header_timeout", message, uuid.uuid4().hex)).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head deadline and connection admission.

    Made per server by :func:`limited_h11_protocol` (the class attributes are that
    server's); one instance per connection, on the event loop only.
    """

    header_timeout_s: ClassVar[float] = 10.0
    #: this server's admitted connections (shared by all its connections)
    admitted: ClassVar[set[LimitedH11Protocol]] = set()

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # Take the concurrency check over from uvicorn: its plain-text 503 goes to every
        # connection once `limit` are open; ours refuses only the ones past the limit.
        self.max_connections = self.limit_concurrency
        self.limit_concurrency = None
        self.inner_app = self.app
        self.app = self._admit_or_refuse
        self.head_timer: asyncio.TimerHandle | None = None

    # --- the head timer
    def _waiting_for_head(self) -> bool:
        """No request of this connection is with the app (none yet, or it was answered)."""
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        if self.head_timer is None and not self.transport.is_closing():
            self.head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _disarm(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.transport.is_closing() or not self._waiting_for_head():
            return
        partial_head = self.conn.their_state is h11.IDLE and bool(self.conn.trailing_data[0])
        if partial_head:
            log.debug("closing a connection whose request head is incomplete")
            self.transport.write(_timeout_response(self.header_timeout_s))
        with contextlib.suppress(h11.LocalProtocolError):  # then closing is all that is left
            self.conn.send(h11.ConnectionClosed())
        self.transport.close()

    # --- uvicorn's hooks
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.max_connections is None or len(self.admitted) < self.max_connections:
            self.admitted.add(self)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.admitted.discard(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # cancels uvicorn's keep-alive timer, parses, starts a request
        if not self._waiting_for_head():
            self._disarm()  # a head is complete: the app bounds the body and the answer
        elif self.conn.their_state is not h11.IDLE or self.conn.trailing_data[0]:
            self._arm()  # the first bytes of a head, or of an unread body: deadline from now

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms keep-alive; may start a pipelined request
        if not self._waiting_for_head():
            self._disarm()
        elif self.conn.their_state is not h11.IDLE or self.conn.trailing_data[0]:
            # The body was not read (their_state SEND_BODY: it still arrives) or part of the
            # next head is already here: either way data is pending, keep-alive won't do.
            self._disarm()
            self._arm()

    # --- admission
    async def _admit_or_refuse(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        limit = self.max_connections
        # `tasks` holds this request's task too, hence `>`: `limit` requests may run
        if limit is not None and (self not in self.admitted or len(self.tasks) > limit):
            log.warning("refused: connection limit", extra={"code": "overloaded"})
            message = (
                f"the service has its limit of {limit} connections open "
                "(SHARPCXR_MAX_CONNECTIONS); retry after the number of seconds in Retry-After"
            )
            body = json.dumps(error_body("overloaded", message, uuid.uuid4().hex)).encode()
            # through the request cycle (as uvicorn's own 503): h11 sees `connection: close`
            # and uvicorn closes the connection once it is sent
            await send({
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(RETRY_AFTER_S).encode()),
                    (b"connection", b"close"),
                ],
            })  # fmt: skip
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        await self.inner_app(scope, receive, send)


def limited_h11_protocol(header_timeout_s: float) -> type[LimitedH11Protocol]:
    """A :class:`LimitedH11Protocol` class of its own (its own admitted set) for one server."""
    attributes: dict[str, Any] = {"header_timeout_s": header_timeout_s, "admitted": set()}
    return type("SharpcxrH11Protocol", (LimitedH11Protocol,), attributes)


def uvicorn_limits(settings: Settings) -> dict[str, Any]:
    """The ``uvicorn.Config`` keyword arguments of the service's connection bounds."""
    return {
        "http": limited_h11_protocol(settings.header_timeout_s),
        "ws": "none",  # the service has no websocket route: no second protocol to bound
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "limit_concurrency": settings.max_connections,
        "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
        "backlog": max(MIN_BACKLOG, min(settings.max_connections, MAX_BACKLOG)),
    }
