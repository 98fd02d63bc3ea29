"""A TCP forwarder on 127.0.0.1 that a test can cut (as a network failure does) and restore."""

import socket
import threading

BUFFER = 65536
ACCEPT_POLL = 0.1  # how often the accept loop notices a cut


class TcpProxy:
    """Forwards 127.0.0.1:`port` to (host, port) of the target, one pair of threads per connection.

    `cut()` drops every open connection and closes the listening socket, so new connections are
    refused; `restore()` listens on the same port again. The clients never learn about the proxy.
    """

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.port = 0
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._drop_marker: bytes | None = None
        self._drop_forwarding = False
        self.dropped = threading.Event()

    def start(self) -> "TcpProxy":
        """Listen (on a free port the first time, the same port after a cut) and forward."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(ACCEPT_POLL)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._accepting = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._accepting.start()
        return self

    restore = start

    def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        listener, self._listener = self._listener, None
        if listener is not None:
            self._accepting.join()  # it closes the listener within ACCEPT_POLL of seeing the cut
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            _drop(connection)

    stop = cut

    def drop_at(self, marker: bytes, forward: bool = False) -> None:
        """Drop the next connection whose client sends bytes holding `marker`, before the target gets
        them (a link lost between two commands), or with `forward` once it has them but before its
        answer comes back; once. `dropped` is set when it happened."""
        self.dropped.clear()
        self._drop_marker, self._drop_forwarding = marker, forward

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _drop(client)
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._connections.update((client, upstream))
            for source, sink, from_client in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(source, sink, from_client), daemon=True).start()
        listener.close()

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        try:
            while data := source.recv(BUFFER):
                if from_client and self._should_drop(data):
                    if self._drop_forwarding:
                        _drop(source)  # first: the client never gets the answer
                        sink.sendall(data)
                        _wait_for_answer(sink)
                    break
                sink.sendall(data)
        except OSError:
            pass
        # One side ended: end the other, so neither end waits on a half-open connection.
        with self._lock:
            self._connections.difference_update((source, sink))
        _drop(source)
        _drop(sink)

    def _should_drop(self, data: bytes) -> bool:
        with self._lock:
            if self._drop_marker is None or self._drop_marker not in data:
                return False
            self._drop_marker = None
        self.dropped.set()
        return True


def _wait_for_answer(target: socket.socket) -> None:
    """Until the target answered (it has carried out what it was sent) or closed; this or the other pump
    thread reads the answer, and the other one finds the client gone."""
    try:
        target.recv(BUFFER)
    except OSError:
        pass


def _drop(connection: socket.socket) -> None:
    """Close now; shutdown first wakes a thread blocked in recv on it."""
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    connection.close()
