"""An HTTP relay on the loopback in front of an S3 endpoint that fails UploadParts as told:
a store's internal error, or a connection dropped in the middle of a part.

``PartFaults(endpoint)`` listens on 127.0.0.1 (:attr:`PartFaults.endpoint`)
and relays each request to ``endpoint`` as it came (the same head, so its
signature holds, and body), and the answer back. :meth:`PartFaults.fail`
makes the next UploadParts (``PUT …?partNumber=…``) fail instead: their
body is read whole and answered with :data:`FAILED_STATUS` (as a store's
internal error), or half of it is read and the connection closed unanswered
(:data:`DROP`). Every other request, and the UploadParts past the faults,
reach the store. Threads, not a loop: the test's own thread stays free.
"""

from __future__ import annotations

import http.client
import ipaddress
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

LOOPBACK = "127.0.0.1"
#: How a failed UploadPart is answered: the S3 API's "service unavailable" (retried).
FAILED_STATUS = 503
FAILED_BODY = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>ServiceUnavailable"
               b"</Code><Message>injected</Message></Error>")
#: The other fault: half the part's body read, then the connection closed unanswered.
DROP = "drop"
STATUS = "status"
#: Seconds a relayed connection waits for the client's next bytes (a body shorter than its
#: Content-Length, as a part sent again from the wrong place would be, ends here).
IDLE_TIMEOUT = 10.0
#: Headers of an answer that describe its transfer on one connection, not its content.
_HOP_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})


class PartFaults:
    """One relay (see the module doc); :meth:`close` stops it."""

    def __init__(self, endpoint: str) -> None:
        target = urlsplit(endpoint)
        self._target = (target.hostname or LOOPBACK, target.port or 80)
        if not ipaddress.ip_address(self._target[0]).is_loopback:
            raise ValueError(f"the relay only relays to the loopback, not {self._target[0]}")
        self._lock = threading.Lock()
        self._faults: list[str] = []
        #: UploadParts that reached this relay, and those of them failed.
        self.parts = 0
        self.failed = 0
        self._server = ThreadingHTTPServer((LOOPBACK, 0), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"

    def fail(self, count: int, how: str = STATUS) -> None:
        """Fail the next ``count`` UploadParts (``how``: :data:`STATUS` or :data:`DROP`)."""
        with self._lock:
            self._faults.extend([how] * count)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _fault_for(self, method: str, path: str) -> str | None:
        """The fault this request meets (None: it is relayed); counts UploadParts."""
        if method != "PUT" or "partNumber" not in parse_qs(urlsplit(path).query):
            return None
        with self._lock:
            self.parts += 1
            if not self._faults:
                return None
            self.failed += 1
            return self._faults.pop(0)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = IDLE_TIMEOUT

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                """Quiet: the test's output is not the place."""

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                fault = relay._fault_for(self.command, self.path)
                if fault == DROP:
                    self.rfile.read(length // 2)
                    self.close_connection = True
                    return
                body = self.rfile.read(length)
                if len(body) < length:  # the client sent less than it said
                    self.close_connection = True
                    return
                if fault == STATUS:
                    self._answer(FAILED_STATUS, [("Content-Type", "application/xml")],
                                 FAILED_BODY)
                    return
                store = http.client.HTTPConnection(*relay._target, timeout=IDLE_TIMEOUT)
                try:
                    store.putrequest(self.command, self.path, skip_host=True,
                                     skip_accept_encoding=True)
                    for name, value in self.headers.items():
                        store.putheader(name, value)
                    store.endheaders(body)
                    answer = store.getresponse()
                    content = answer.read()
                    headers = [(name, value) for name, value in answer.getheaders()
                               if name.lower() not in _HOP_HEADERS]
                    if self.command == "HEAD":  # its length is the object's, with no body
                        headers.append(("Content-Length",
                                        answer.getheader("Content-Length", "0")))
                        content = b""
                    self._answer(answer.status, headers, content,
                                 with_length=self.command != "HEAD")
                finally:
                    store.close()

            def _answer(self, status: int, headers: list[tuple[str, str]], content: bytes,
                        with_length: bool = True) -> None:
                self.send_response_only(status)
                for name, value in headers:
                    self.send_header(name, value)
                if with_length:
                    self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay  # noqa: N815

        return Handler
