"""A rate limit shared by every worker process, kept in Redis (GCRA: requests evenly spaced).

A fixed per-second counter lets 2x the limit through around a second boundary; slots handed out
1/rate apart (with no burst) keep every one-second window at or under the limit. Each caller
reserves the next free slot and sleeps until it, so no slot goes unused to retry contention.
"""

import time

import redis

# Reserves the next slot and returns {seconds until it, the slot on the server's clock}, or -1
# when that is beyond the caller's patience (ARGV[2]; nothing is reserved then). Uses the server's clock, so every
# worker agrees on "now" whatever its own clock says.
RESERVE_SCRIPT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local interval = tonumber(ARGV[1])
local patience = tonumber(ARGV[2])
local slot = tonumber(redis.call('GET', KEYS[1]) or '0')
if slot < now then slot = now end
local wait = slot - now
if wait > patience then return '-1' end
redis.call('SET', KEYS[1], tostring(slot + interval), 'PX', math.ceil((wait + interval + 1) * 1000))
return {tostring(wait), tostring(slot)}
"""


class RateLimiter:
    """At most `rate` grants per second across all processes sharing `client` and `name`."""

    def __init__(self, client: redis.Redis, name: str, rate: float):
        self.key = f"app:ratelimit:{name}"
        self.interval = 1.0 / rate
        self._script = client.register_script(RESERVE_SCRIPT)

    def reserve_slot(self, patience: float) -> tuple[float, float] | None:
        """Reserve the next slot within `patience` seconds: (seconds until it, its time on the
        Redis server's clock), or None."""
        answer = self._script(keys=[self.key], args=[self.interval, patience])
        if not isinstance(answer, list):
            return None
        wait, slot = answer
        return float(wait), float(slot)

    def reserve(self, patience: float) -> float | None:
        """Reserve the next slot within `patience` seconds: the seconds until it, or None."""
        reserved = self.reserve_slot(patience)
        return None if reserved is None else reserved[0]

    def acquire(self, timeout: float = 60.0) -> None:
        """Block until this caller's slot; TimeoutError when none is free within `timeout`."""
        wait = self.reserve(timeout)
        if wait is None:
            raise TimeoutError(f"rate limit {self.key}: no slot within {timeout:.0f}s")
        if wait > 0:
            time.sleep(wait)
