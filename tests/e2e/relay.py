"""A TCP relay in front of a server that keeps every byte the server sent back, unchanged.

    with Relay(proxy.port) as relay:        # point any client (Cline, the OpenAI client) at relay.url
        ...
        b": keep-alive" in relay.received   # what the client's socket really got, SSE comments included

A client's library hides SSE comments; the bytes on its socket show they were there.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11


class Relay:
    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self._received = bytearray()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def received(self) -> bytes:
        with self._lock:
            return bytes(self._received)

    def __enter__(self) -> Self:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._listener.close()
        for sock in list(self._sockets):
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(self.target)
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, record: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if record:
                    with self._lock:
                        self._received += data
                sink.sendall(data)
        for sock in (source, sink):  # one side closed: the other one is done too
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
