"""A message BRPOP took off its queue whose unacked record never reached Redis, because the link
dropped between the two (celery/kombu#305: in neither the queue nor the unacked hash), goes back to
its queue when the consumer reconnects, once, also when the record was written but its answer lost: on a
real Redis, the link cut by the TCP proxy right there."""

from urllib.parse import urlsplit

import kombu
import pytest
import redis

from app.core.broker_transport import install
from tests.support.services import redis_test_url
from tests.support.tcp_proxy import TcpProxy

QUEUE = kombu.Queue("link-loss-probe", kombu.Exchange("link-loss-probe", "direct"), routing_key="link-loss-probe")


@pytest.fixture
def broker():
    """(the Redis URL, the same database through a TCP proxy) and a client of it."""
    url = redis_test_url()
    target = urlsplit(url)
    proxy = TcpProxy(target.hostname, target.port).start()
    install()
    yield url, url.replace(target.netloc, f"127.0.0.1:{proxy.port}", 1), proxy
    proxy.stop()


def consume_one(url: str) -> list[dict]:
    received = []

    def take(body, message):
        received.append(body)
        message.ack()

    with kombu.Connection(url) as connection, connection.Consumer(QUEUE, callbacks=[take]):
        connection.drain_events(timeout=10)
    return received


@pytest.mark.parametrize("recorded", [False, True], ids=["record lost", "record written, answer lost"])
def test_a_message_taken_as_the_link_drops_goes_back_to_its_queue_once(broker, recorded):
    url, via_proxy, proxy = broker
    with kombu.Connection(url) as connection:
        connection.Producer().publish({"job": 1}, exchange=QUEUE.exchange, routing_key=QUEUE.routing_key,
                                      declare=[QUEUE])
    server = redis.Redis.from_url(url)

    proxy.drop_at(b"ZADD", forward=recorded)  # the unacked record kombu writes right after BRPOP returned
    with pytest.raises(redis.ConnectionError):
        consume_one(via_proxy)
    assert proxy.dropped.is_set()
    assert server.llen(QUEUE.name) == 0 and server.hlen("unacked") == int(recorded)

    assert consume_one(via_proxy) == [{"job": 1}], "pushed back and delivered on the next connection"
    assert server.llen(QUEUE.name) == 0, "once"
    assert server.hlen("unacked") == 0 and server.zcard("unacked_index") == 0, "no record left to restore it again"
