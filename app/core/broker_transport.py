"""The broker transport: a Redis server that refuses writes is a broker outage, not a crash.

A Redis (or Valkey) server whose append-only file cannot be written (its disk is full) answers every
write, and PING, with `MISCONF ...` until the write succeeds again (it retries every second by itself).
redis-py raises that as a plain `ResponseError`, which kombu's Redis transport counts among its
channel errors, not its connection errors. Celery's consumer reconnects only on connection errors
(`broker_channel_error_retry`, celery/celery#7946 and #7951, would retry on every channel error, a
typo'd command included), so the first refusal killed the worker for good ("Unrecoverable error:
ResponseError"), raised by kombu's `QoS.append` (the ZADD recording a message it has just taken off
its queue with BRPOP as unacked) or by the BRPOP itself. The same holds for OOM (maxmemory reached
under noeviction) and READONLY (connected to a replica after a failover).

Here, on the broker connections of this transport only, the parser raises those three refusals as
`WritesRefused`, a redis-py `ConnectionError` (as redis-py already does for `LOADING`): redis-py's
parser raises it at once and drops the connection, as for a lost socket (it is not a `ResponseError`,
which a pipeline would catch and then read on from the dropped connection). kombu and Celery do what
they do when the broker goes away: the consumer drops the connection and reconnects with its backoff
(a refused PING, or the write this transport adds to kombu's connection check, fails the attempt), and
goes on once the server takes writes again. The message taken off its queue by the BRPOP whose
unacked record was refused, or lost because the link dropped (a broker restart, a network cut), is kept
here and pushed back to the head of its queue when a channel next connects (kombu would lose it: it is
neither in the queue nor in the unacked hash, celery/kombu#305; tests/test_broker_link_loss.py).
An ack lost the same way (the task ran; the removal of its unacked record did not reach the server) is
owed, not forgotten: kombu would leave the message unacked, to be given back and run a second time when
the channel closes or the consumer reconnects. Here it counts as acked at once and its record is removed
as soon as the broker answers again (the next message taken, the channel's close, or the consumer's
reconnect, `QoS.hand_over`).

`install()` makes this the transport of the `redis://`, `rediss://` and `redis+socket://` URLs in this
process (kombu's alias table). Beat's fenced transport (app/scheduling/fenced_transport.py) sets its
own class and so keeps kombu's behaviour unless it subclasses this one.
"""

from __future__ import annotations

import functools
import logging
import os
import threading

import redis
from kombu import transport as kombu_transports
from kombu.transport import redis as redis_transport
from kombu.transport import virtual
from kombu.utils.json import dumps, loads
from redis._parsers import _HiredisParser, _RESP2Parser, _RESP3Parser
from redis.utils import HIREDIS_AVAILABLE, check_protocol_version

log = logging.getLogger(__name__)

# What a dropped link, a broker restart or a refused write (WritesRefused) raises in redis-py.
LINK_ERRORS = (redis.ConnectionError, redis.TimeoutError)

WRITE_CHECK_KEY = "app:broker:write-check"
WRITE_CHECK_TTL_MS = 60_000


class WritesRefused(redis.exceptions.ConnectionError):
    """The server is up but refuses writes until an operator frees disk or memory (or it is a replica)."""

    def __str__(self) -> str:
        words = super().__str__()
        return f"{self.status_code} {words}" if self.status_code and not words.startswith(self.status_code) else words


class PersistenceFailing(WritesRefused):
    """MISCONF: the server cannot write its append-only file or snapshot (disk full, I/O error)."""


class MemoryFull(WritesRefused):
    """OOM: maxmemory reached under the noeviction policy."""


class ReadOnlyReplica(WritesRefused):
    """READONLY: this connection reached a replica (a failover moved the primary)."""


REFUSALS = {"MISCONF": PersistenceFailing, "OOM": MemoryFull, "READONLY": ReadOnlyReplica}


def _refusing(parser: type) -> type:
    """`parser` (one of redis-py's), with the write refusals above raised as connection errors."""
    return type(f"Refusal{parser.__name__.lstrip('_')}", (parser,),
                {"EXCEPTION_CLASSES": {**parser.EXCEPTION_CLASSES, **REFUSALS}, "__module__": __name__})


# One per protocol: redis-py swaps a RESP2 parser for its own RESP3 one when it speaks RESP3 (its
# default since 8.0), so the parser has to be the right one from the start.
REFUSAL_PARSERS = {"hiredis": _refusing(_HiredisParser), 2: _refusing(_RESP2Parser), 3: _refusing(_RESP3Parser)}


def refusal_parser(protocol=None) -> type:
    if HIREDIS_AVAILABLE:
        return REFUSAL_PARSERS["hiredis"]
    return REFUSAL_PARSERS[3 if check_protocol_version(protocol, 3) else 2]


# Messages BRPOP took off their queue whose unacked record was refused or lost with the link:
# (payload, exchange, routing key), pushed back by the next channel that connects. Per process: the
# consumer's connection, transport and channels are all replaced when it reconnects.
_unrecorded: list[tuple[dict, str, str]] = []
_unrecorded_lock = threading.Lock()


def _forget_in_child() -> None:
    """A forked pool child must not push back its parent's messages a second time."""
    global _unrecorded_lock
    _unrecorded.clear()
    _unrecorded_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)


def unrecorded_messages() -> int:
    """How many taken messages wait to be pushed back to their queue."""
    with _unrecorded_lock:
        return len(_unrecorded)


class QoS(redis_transport.QoS):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.owed_acks: set = set()  # tags of messages done whose unacked record the server may still hold

    def append(self, message, delivery_tag):
        """Record `message` as unacked; one whose record was refused or whose link dropped meanwhile is
        kept, to go back to its queue (the callback never saw it: kombu calls it after this)."""
        self.pay_owed_acks()
        try:
            super().append(message, delivery_tag)
        except LINK_ERRORS as error:
            delivery = message.delivery_info
            with _unrecorded_lock:
                _unrecorded.append((message._raw, delivery["exchange"], delivery["routing_key"]))
            headers = message.headers or {}
            log.warning("could not record task %s[%s] as unacked (%s): it goes back to queue %s once the "
                        "broker is reachable and takes writes again", headers.get("task"), headers.get("id"),
                        error, delivery["routing_key"])
            raise

    def ack(self, delivery_tag):
        self._remove_or_owe(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag, requeue=False):
        """Without requeue, kombu's reject is its ack: done with, owed if the link is down."""
        if requeue:
            super().reject(delivery_tag, requeue=True)
        else:
            self.ack(delivery_tag)

    def _remove_or_owe(self, delivery_tag) -> None:
        """Remove the unacked record of a message that is done with; if the link is down, owe it."""
        try:
            self._remove_from_indices(delivery_tag).execute()
        except LINK_ERRORS as error:
            self.owed_acks.add(delivery_tag)
            log.warning("could not ack message %s (%s): the ack is sent once the broker is reachable "
                        "again, and the message is not delivered again", delivery_tag, error)

    def pay_owed_acks(self, through: "QoS | None" = None) -> None:
        """Remove the records of the acks owed, through this channel or `through`, the QoS of a channel on
        a new connection. A link still down keeps them owed; with `through` it raises."""
        owed = list(self.owed_acks)
        if not owed:
            return
        qos = through or self
        try:
            with qos.pipe_or_acquire() as pipe:
                for tag in owed:
                    qos._remove_from_indices(tag, pipe)
                pipe.execute()
        except LINK_ERRORS:
            if through is not None:
                raise
            return
        self.owed_acks.difference_update(owed)
        log.warning("sent %d ack(s) owed since the broker connection was lost", len(owed))

    def restore_unacked_once(self, stderr=None):
        """At the channel's close: the owed acks first (no message done with is left to be given back)."""
        if self.channel.connection is not None:  # a channel collected after a lost connection has none
            self.pay_owed_acks()
        return super().restore_unacked_once(stderr)

    def hand_over(self, restorer: "QoS") -> int:
        """Through `restorer`, the QoS of a channel on a new connection (this channel's is gone): send the
        acks owed, then give the messages still unacked back to their queues; how many went back.
        Each is given back once: kombu's restore_by_tag is a transaction on the unacked hash."""
        self.pay_owed_acks(through=restorer)
        self._flush()  # acked tags: done with, not to be given back
        given_back = 0
        for tag in list(self._delivered):
            restorer.restore_by_tag(tag)
            self._delivered.pop(tag, None)
            given_back += 1
        return given_back


class Channel(redis_transport.Channel):
    QoS = QoS

    def _connparams(self, asynchronous=False):
        params = super()._connparams(asynchronous)
        params["parser_class"] = refusal_parser(params.get("protocol"))
        return params

    def _get_client(self):
        """kombu checks a new channel with PING, which a server whose disk is full refuses, but one
        out of memory or a replica answers. A write as well makes each of them fail the connection
        attempt, so the consumer waits out its backoff instead of restarting in a tight loop; once
        writes succeed, the messages kept above go back to their queue, before kombu registers the
        channel (a failure leaves nothing half set up)."""
        client_class, channel = super()._get_client(), self
        prefixed = isinstance(client_class, functools.partial)  # global_keyprefix: a partial of kombu's

        class Client(client_class.func if prefixed else client_class):
            def ping(self, **kwargs):
                answer = super().ping(**kwargs)
                self.set(WRITE_CHECK_KEY, "1", px=WRITE_CHECK_TTL_MS)
                channel._push_back_unrecorded(self)
                return answer

        return functools.partial(Client, *client_class.args, **client_class.keywords) if prefixed else Client

    def _push_back_unrecorded(self, client) -> None:
        with _unrecorded_lock:
            waiting = list(_unrecorded)
            if not waiting:
                return
            pipe = client.pipeline()
            for payload, exchange, routing_key in waiting:
                # A copy: a refused attempt leaves the kept payload as it was.
                # A record written after all (the link dropped after the server took it) is no second
                # copy: the message keeps its delivery tag, so its next delivery rewrites that same
                # record and its ack deletes it.
                self._do_restore_message(loads(dumps(payload)), exchange, routing_key, pipe)
            pipe.execute()  # refused: raised, and kept for the next attempt
            del _unrecorded[:len(waiting)]
        log.warning("pushed %d message(s) taken while the broker refused writes back to their queue", len(waiting))


class Transport(redis_transport.Transport):
    Channel = Channel


TRANSPORT = f"{__name__}:Transport"
ALIASES = ("redis", "rediss")  # redis+socket:// is the redis alias with a socket URL


def install() -> None:
    """This transport for every Redis broker URL opened in this process from now on."""
    for alias in ALIASES:
        kombu_transports.TRANSPORT_ALIASES[alias] = TRANSPORT
        # Resolved names are cached: drop one resolved before this ran.
        cache = getattr(kombu_transports, "_transport_cache", None)
        if isinstance(cache, dict):
            cache.pop(alias, None)
