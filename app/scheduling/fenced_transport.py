"""Beat's broker transport: a message is pushed only while this beat holds the leader lease.

The lease lives in the broker's own Redis, so one script checks the lease and pushes the message
atomically: a beat that lost the lease, however long it was stalled and wherever it stalled,
cannot publish. Only beat's publishing connection uses it; workers use app/core/broker_transport.py's,
of which this is a subclass (a broker refusing writes is an outage here too).
"""

from kombu.utils.json import dumps

from app.core import broker_transport

FENCE_OPTION = "beat_fence"  # transport option: (lease key, this beat's identity)

FENCED_PUSH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('LPUSH', KEYS[2], ARGV[2])
return 1
"""


class NotLeading(Exception):
    """The message was not pushed: another beat holds the leader lease (or none does)."""


class FencedChannel(broker_transport.Channel):
    supports_batch_publish = False  # every message goes through the fenced push below
    _fenced_push = None

    def _put(self, queue, message, **kwargs):
        lease_key, identity = self.connection.client.transport_options[FENCE_OPTION]
        if self._expires and queue in self._expires:
            raise NotImplementedError("beat publishes to queues without x-expires only")
        key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))
        with self.conn_or_acquire() as client:
            if self._fenced_push is None:
                self._fenced_push = client.register_script(FENCED_PUSH)
            pushed = self._fenced_push(keys=[lease_key, key], args=[identity, dumps(message)], client=client)
        if not pushed:
            raise NotLeading(f"{identity} does not hold {lease_key}")


class FencedTransport(broker_transport.Transport):
    Channel = FencedChannel


def fence(connection, lease_key: str, identity: str):
    """`connection` (not yet connected), publishing through the fenced transport as `identity`."""
    connection.transport_cls = FencedTransport
    connection.transport_options = {**connection.transport_options, FENCE_OPTION: (lease_key, identity)}
    return connection
