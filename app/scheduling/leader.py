"""One sending beat among any number: a leader lease and a liveness heartbeat in the broker's Redis.

Every beat runs the same script each tick: it takes the lease when nobody holds it, extends it
when it holds it, and writes its heartbeat, all on the Redis server's clock. Only the holder
sends. A leader that dies stops extending; the lease expires and the next standby to tick takes
it. A beat stuck inside a tick stops writing its heartbeat, which `status` reports as down.
"""

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass

import redis

log = logging.getLogger(__name__)

LEASE_KEY = "beat:leader"
HEARTBEAT_PREFIX = "beat:heartbeat:"
# A dead beat's heartbeat is shown as stale for a while, then forgotten.
HEARTBEAT_KEEP_FACTOR = 20

TICK_SCRIPT = """
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
local holder = redis.call('GET', KEYS[1])
local leading = 0
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  leading = 1
elseif not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  leading = 1
end
redis.call('HSET', KEYS[2], 'id', ARGV[1], 'host', ARGV[3], 'pid', ARGV[4], 'beat_ms', now_ms, 'leading', leading)
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return leading
"""

RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'leading', 0)
  return 1
end
return 0
"""


def lease_timing(timeout: float, max_interval: float) -> tuple[float, float]:
    """(tick interval, lease time to live) that make a standby take over within `timeout`.

    A dead leader's lease lives at most `ttl` after its last renewal; a standby ticking every
    `interval` notices within `interval` more: ttl + interval == timeout.
    """
    interval = min(max_interval, timeout / 4)
    return interval, timeout - interval


class Leadership:
    """This beat's side of the lease: renew (or take) it and write the heartbeat, or give it up."""

    def __init__(self, client: redis.Redis, timeout: float, max_interval: float):
        self.client = client
        self.identity = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.tick_interval, ttl = lease_timing(timeout, max_interval)
        self.ttl_ms = int(ttl * 1000)
        self.keep_ms = int(timeout * HEARTBEAT_KEEP_FACTOR * 1000)
        self.leading = False
        self.renewed_at = 0.0  # time.monotonic() of the last renewal that found this beat leading
        self._tick = client.register_script(TICK_SCRIPT)
        self._release = client.register_script(RELEASE_SCRIPT)
        self._unreachable = False

    @property
    def heartbeat_key(self) -> str:
        return HEARTBEAT_PREFIX + self.identity

    def renew(self) -> bool:
        """Take or extend the lease and write the heartbeat; whether this beat leads now.

        With Redis unreachable nobody can know who leads, so this beat does not send.
        """
        try:
            leading = bool(self._tick(keys=[LEASE_KEY, self.heartbeat_key], args=[
                self.identity, self.ttl_ms, socket.gethostname(), os.getpid(), self.keep_ms]))
        except redis.RedisError as error:
            if not self._unreachable:
                log.error("leader lease unreachable (%s): not sending until Redis answers", error)
            self._unreachable, leading = True, False
        else:
            if self._unreachable:
                log.info("leader lease reachable again")
            self._unreachable = False
        self._log_change(leading)
        self.leading = leading
        if leading:
            self.renewed_at = time.monotonic()
        return leading

    def _log_change(self, leading: bool) -> None:
        if leading and not self.leading:
            log.info("leading: %s holds the leader lease and sends due jobs", self.identity)
        elif self.leading and not leading:
            log.warning("standing by: %s no longer holds the leader lease", self.identity)

    def release(self) -> None:
        """Give the lease up at a clean stop, so a standby takes over at its next tick."""
        try:
            self._release(keys=[LEASE_KEY, self.heartbeat_key], args=[self.identity])
        except redis.RedisError as error:
            log.warning("leader lease not released (%s): it expires by itself", error)
        self.leading = False


@dataclass(frozen=True)
class BeatHeartbeat:
    identity: str
    host: str
    pid: int
    leading: bool
    age_seconds: float  # since its last tick, on the Redis server's clock

    def alive(self, timeout: float) -> bool:
        return self.age_seconds <= timeout


def beat_heartbeats(client: redis.Redis) -> list[BeatHeartbeat]:
    """Every beat that ticked recently enough to be remembered, leader first."""
    seconds, micros = client.time()
    now_ms = seconds * 1000 + micros // 1000
    beats = []
    for key in client.scan_iter(match=HEARTBEAT_PREFIX + "*", count=100):
        fields = {k.decode(): v.decode() for k, v in client.hgetall(key).items()}
        if not fields:
            continue
        beats.append(BeatHeartbeat(
            identity=fields["id"], host=fields["host"], pid=int(fields["pid"]), leading=fields["leading"] == "1",
            age_seconds=(now_ms - int(fields["beat_ms"])) / 1000))
    return sorted(beats, key=lambda beat: (not beat.leading, beat.age_seconds))


def lease_holder(client: redis.Redis) -> str | None:
    holder = client.get(LEASE_KEY)
    return holder.decode() if holder else None


@dataclass(frozen=True)
class Liveness:
    """Which beat leads, and whether it still ticks."""

    ok: bool
    detail: str
    heartbeats: list[BeatHeartbeat]
    holder: str | None = None  # the identity holding the leader lease


def beat_liveness(client: redis.Redis, timeout: float) -> Liveness:
    """OK when a beat holds the lease and its heartbeat is younger than `timeout`."""
    holder, heartbeats = lease_holder(client), beat_heartbeats(client)
    leader = next((beat for beat in heartbeats if beat.identity == holder), None)
    standbys = sum(beat.identity != holder and beat.alive(timeout) for beat in heartbeats)
    others = f"; {standbys} standby" if standbys else ""
    if leader and leader.alive(timeout):
        return Liveness(True, f"{holder} leads, last tick {leader.age_seconds:.1f} s ago{others}", heartbeats, holder)
    if leader:
        return Liveness(False, f"{holder} holds the lease but has not ticked for {leader.age_seconds:.0f} s "
                               f"(stuck?){others}", heartbeats, holder)
    last = min(heartbeats, key=lambda beat: beat.age_seconds, default=None)
    seen = f"last heartbeat {last.age_seconds:.0f} s ago from {last.identity}" if last else "no beat has ticked"
    return Liveness(False, f"no beat leads: {seen}{others}", heartbeats, holder)
