"""A rate limit shared by every worker process, kept in Redis (GCRA: requests evenly spaced).

A fixed per-second counter lets 2x the limit through around a second boundary; spacing grants
1/rate apart (with no burst) keeps every one-second window at or under the limit.
"""

import time

import redis

# Returns 0 when the caller may go now, else the seconds to wait. Uses the server's clock, so
# every worker agrees on "now" whatever its own clock says.
GCRA_SCRIPT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
if tat > now then return tostring(tat - now) end
redis.call('SET', KEYS[1], tostring(tat + interval), 'PX', math.ceil((interval + 1) * 1000))
return '0'
"""


class RateLimiter:
    """At most `rate` grants per second across all processes sharing `client` and `name`."""

    def __init__(self, client: redis.Redis, name: str, rate: float):
        self.key = f"app:ratelimit:{name}"
        self.interval = 1.0 / rate
        self._script = client.register_script(GCRA_SCRIPT)

    def try_acquire(self) -> float:
        """0.0 when granted; otherwise how long to wait before asking again."""
        return float(self._script(keys=[self.key], args=[self.interval]))

    def acquire(self, timeout: float = 60.0) -> None:
        """Block until granted; TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (wait := self.try_acquire()) > 0:
            if time.monotonic() + wait > deadline:
                raise TimeoutError(f"rate limit {self.key}: no slot within {timeout:.0f}s")
            time.sleep(wait)
