"""The shared rate limit on a real Redis, from several processes at once."""

import multiprocessing
import time

import pytest
import redis

from app.core.broker import redis_client
from app.services.ratelimit import RateLimiter


def grab(url: str, name: str, rate: float, count: int, out) -> None:
    """Take `count` slots as acquire() does, reporting each slot's time on the server's clock (not
    when this process woke up: a loaded machine wakes sleepers late, which says nothing of the limiter)."""
    from app.core.broker import redis_client as connect

    limiter = RateLimiter(connect(url), name, rate)
    for _ in range(count):
        wait, slot = limiter.reserve_slot(patience=60)
        out.put(slot)
        time.sleep(wait)


@pytest.fixture(params=["embedded", "redis"])
def url(request):
    if request.param == "embedded":
        request.getfixturevalue("embedded_broker")
        return request.getfixturevalue("settings").broker_url
    return request.getfixturevalue("redis_url")


def test_no_one_second_window_exceeds_the_limit_across_processes(url):
    rate, per_process, processes = 50, 40, 3
    name = f"test-{time.monotonic_ns()}"
    grants = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=grab, args=(url, name, rate, per_process, grants))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    times = sorted(grants.get(timeout=30) for _ in range(per_process * processes))
    for worker in workers:
        worker.join(10)
    busiest = max(sum(1 for t in times if start <= t < start + 1) for start in times)
    # Slots are 1/rate apart; Lua's tostring keeps them to 0.1 ms, which can put the slot that
    # opens the next window exactly on this one's edge.
    assert busiest <= rate + 1
    elapsed = times[-1] - times[0]
    assert elapsed >= (len(times) - 1) / rate * 0.9, "grants are spaced 1/rate apart"
    assert elapsed <= (len(times) - 1) / rate * 1.5, "and no slower than needed"
    redis_client(url).delete(f"app:ratelimit:{name}")


def test_reserve_hands_out_consecutive_slots(url):
    limiter = RateLimiter(redis_client(url), f"test-wait-{time.monotonic_ns()}", rate=2)
    assert limiter.reserve(patience=10) == 0
    assert 0.4 < limiter.reserve(patience=10) <= 0.5
    assert 0.9 < limiter.reserve(patience=10) <= 1.0
    assert limiter.reserve(patience=0.5) is None, "a slot beyond the caller's patience is not taken"
    assert 1.4 < limiter.reserve(patience=10) <= 1.5, "and the refused call reserved nothing"


def test_acquire_gives_up_after_its_timeout(url):
    limiter = RateLimiter(redis_client(url), f"test-timeout-{time.monotonic_ns()}", rate=0.1)
    limiter.acquire()
    with pytest.raises(TimeoutError):
        limiter.acquire(timeout=1)


def test_unreachable_redis_raises(tmp_path):
    limiter = RateLimiter(redis.Redis(unix_socket_path=str(tmp_path / "none.sock")), "x", 1)
    with pytest.raises(redis.ConnectionError):
        limiter.acquire()
