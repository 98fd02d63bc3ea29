"""A message BRPOP took off its queue whose unacked record never reached Redis, because the link
dropped between the two (celery/kombu#305: in neither the queue nor the unacked hash), goes back to
its queue when the consumer reconnects, once, also when the record was written but its answer lost; an
ack lost the same way is sent again and its message never delivered again: on a real Redis, the link
cut by the TCP proxy right there."""

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


def publish(url: str, *bodies: dict) -> None:
    with kombu.Connection(url) as connection:
        for body in bodies:
            connection.Producer().publish(body, exchange=QUEUE.exchange, routing_key=QUEUE.routing_key,
                                          declare=[QUEUE])


def consume_one(url: str, before_ack=lambda: None) -> list[dict]:
    received = []

    def take(body, message):
        received.append(body)
        before_ack()
        message.ack()

    with kombu.Connection(url) as connection, connection.Consumer(QUEUE, callbacks=[take]):
        connection.drain_events(timeout=10)
    return received


def assert_no_record_left(server: redis.Redis) -> None:
    assert server.hlen("unacked") == 0 and server.zcard("unacked_index") == 0, "no record left to restore"


@pytest.mark.parametrize("recorded", [False, True], ids=["record lost", "record written, answer lost"])
def test_a_message_taken_as_the_link_drops_goes_back_to_its_queue_once(broker, recorded):
    url, via_proxy, proxy = broker
    publish(url, {"job": 1})
    server = redis.Redis.from_url(url)

    proxy.drop_at(b"ZADD", forward=recorded)  # the unacked record kombu writes right after BRPOP returned
    with pytest.raises(redis.ConnectionError):
        consume_one(via_proxy)
    assert proxy.dropped.is_set()
    assert server.llen(QUEUE.name) == 0 and server.hlen("unacked") == int(recorded)

    assert consume_one(via_proxy) == [{"job": 1}], "pushed back and delivered on the next connection"
    assert server.llen(QUEUE.name) == 0, "once"
    assert_no_record_left(server)


ACK_DROPS = pytest.mark.parametrize("acked", [False, True], ids=["ack lost", "ack carried out, answer lost"])


@ACK_DROPS
def test_an_ack_lost_as_the_link_drops_is_sent_again_and_its_message_not_delivered_again(broker, acked):
    url, via_proxy, proxy = broker
    publish(url, {"job": 1})
    server = redis.Redis.from_url(url)

    # ZREM of the unacked index: kombu's ack; the channel's close would give the message back.
    received = consume_one(via_proxy, before_ack=lambda: proxy.drop_at(b"ZREM", forward=acked))
    assert proxy.dropped.is_set()
    assert received == [{"job": 1}]
    assert server.llen(QUEUE.name) == 0, "not given back: it was done with"
    assert_no_record_left(server)


@ACK_DROPS
def test_a_lost_channel_hands_over_its_owed_ack_and_gives_back_only_the_unacked(broker, acked):
    url, via_proxy, proxy = broker
    publish(url, {"job": 1}, {"job": 2})
    server = redis.Redis.from_url(url)

    held = {}
    lost = kombu.Connection(via_proxy)
    channel = lost.default_channel
    with channel.Consumer(QUEUE, callbacks=[lambda body, message: held.update({body["job"]: message})]):
        lost.drain_events(timeout=10)
        lost.drain_events(timeout=10)
    proxy.drop_at(b"ZREM", forward=acked)
    held[1].ack()  # job 1 is done: its ack is owed; job 2 is still running when the link goes
    assert proxy.dropped.is_set()
    proxy.cut()  # the broker connection is lost, as in a restart

    with kombu.Connection(url) as reconnected:
        given_back = channel.qos.hand_over(reconnected.default_channel.qos)
    assert given_back == 1
    assert server.llen(QUEUE.name) == 1 and consume_one(url) == [{"job": 2}], "only the unacked message went back"
    assert_no_record_left(server)
