"""Messages of a dead worker come back within a minute, not after the broker's visibility timeout.

kombu's Redis transport keeps every message a worker holds (running, prefetched, or an ETA retry
waiting for its time) in the `unacked` hash, indexed by delivery time in `unacked_index`, and gives
it back (`restore_visible`) only once it is older than the visibility timeout (an hour here, so no
long task or ETA retry is ever run twice). A worker killed with SIGKILL therefore strands its
messages for an hour. This module gives them back early, and only when their worker is dead:

* Lease. Every worker process registers an instance in `app:recovery:workers` (a sorted set:
  instance -> lease deadline in Redis server time) with its identity (`app:recovery:worker:<id>`:
  node name, machine, pid, process start time) and renews it every RENEW_INTERVAL seconds from a
  thread of its own (a busy event loop or solo-pool task does not stop it).
* Ownership. With each renewal, in the same Lua script, it records the delivery tags its channel
  holds and the `unacked_index` score of each (`app:recovery:held:<id>`: tag -> score). The score is
  the time the holder appended the message, so a tag given back and delivered again (to anyone) has
  a new score: a recorded (tag, score) pair names one delivery, never a later one.
* Dead means: on the same machine (same boot id and pid namespace) its process no longer exists
  (a SIGSTOPped one does, and stays alive however long it sleeps); elsewhere, its lease expired more
  than GRACE_SECONDS ago while this worker kept renewing its own for at least that long (so a
  broker outage, during which nobody renews, never makes anyone dead).
* Claim. A dead instance is removed from the registry by an atomic script that checks the same
  condition in Redis; its renewal then fails, and a worker that finds itself claimed (it was paused
  or cut off past its lease) kills its pool and exits rather than run or ack what was given away.
* Restore. Under kombu's own `unacked_mutex` (the lock `restore_visible` takes), each (tag, score)
  is given back by kombu's restore (`_remove_from_indices` + `_do_restore_message`) in a
  transaction that WATCHes `unacked` and `unacked_index` and goes ahead only if the tag still has
  the recorded score: a message acked, restored or delivered again meanwhile is left alone.
* At worker start (worker_init, before it consumes), if every other registered instance is dead,
  no worker answers a ping (workers not running this code), and there are unacked messages, the
  whole unacked set as snapshotted is restored at once, fenced the same way. Otherwise the periodic
  sweep gives back the recorded messages of each instance as it becomes dead.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass

import psutil
from celery import bootsteps, signals
from kombu.transport.redis import Mutex, MutexHeld
from kombu.utils.json import loads
from kombu.utils.encoding import bytes_to_str

from app.core.exit_codes import EXIT_LEASE_LOST
from app.tasks.celery_app import app

log = logging.getLogger(__name__)

LEASE_SECONDS = 15.0  # a lease not renewed for this long has expired
RENEW_INTERVAL = 2.0  # how often a worker renews its lease and records the tags it holds
# Expired this long (and seen so by a worker renewing all along): dead. A worker on another host
# cut off for less than lease + grace (2 minutes) keeps its messages and resumes when the link heals;
# one cut off longer is claimed, and exits when it comes back (its supervisor starts it afresh).
GRACE_SECONDS = 105.0
SWEEP_INTERVAL = 5.0  # how often a worker looks for dead instances
PING_TIMEOUT = 2.0  # how long a starting worker waits for any other worker to answer a ping
MUTEX_WAIT = 10.0  # how long a starting worker waits for a concurrent restore to release the mutex

REGISTRY_KEY = "app:recovery:workers"
INFO_KEY = "app:recovery:worker:{}"
HELD_KEY = "app:recovery:held:{}"
CLAIMED_KEY = "app:recovery:claimed:{}"

# KEYS: registry, info. ARGV: id, lease seconds, then field/value pairs of the identity.
REGISTER = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('ZADD', KEYS[1], t + tonumber(ARGV[2]), ARGV[1])
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
return tostring(t)
"""

# KEYS: registry, held, unacked_index, claimed mark. ARGV: id, lease seconds, number of tags added,
# added tags..., removed tags... Returns -1 when the instance was claimed, 0 when it is missing from
# the registry without having been claimed (the registry was flushed, or lost in a Redis restart).
RENEW = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  if redis.call('EXISTS', KEYS[4]) == 1 then return -1 end
  return 0
end
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('ZADD', KEYS[1], t + tonumber(ARGV[2]), ARGV[1])
local added = tonumber(ARGV[3])
for i = 4, 3 + added do
  local score = redis.call('ZSCORE', KEYS[3], ARGV[i])
  if score then redis.call('HSET', KEYS[2], ARGV[i], score) end
end
for i = 4 + added, #ARGV do redis.call('HDEL', KEYS[2], ARGV[i]) end
return 1
"""

# KEYS: registry, claimed mark. ARGV: id, grace seconds, "force". Removes the instance if it is still
# registered and (unless forced: its process is known to be gone) its lease expired more than grace
# ago, and marks it claimed (the mark tells its renewal, should it come back, that it was claimed).
CLAIM = """
local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not deadline then return 0 end
if ARGV[3] ~= 'force' then
  local now = redis.call('TIME')
  local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
  if tonumber(deadline) + tonumber(ARGV[2]) > t then return 0 end
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], '1', 'EX', 86400)
return 1
"""


def machine_id() -> str | None:
    """This kernel boot and pid namespace: processes with the same value can see each other's pids."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            boot = handle.read().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return None


def process_exists(pid: int, started: float) -> bool:
    """Whether the process `pid` started at `started` still exists (stopped counts; zombie does not)."""
    try:
        process = psutil.Process(pid)
        return abs(process.create_time() - started) < 1.0 and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@dataclass
class Instance:
    id: str
    deadline: float  # lease deadline, Redis server time
    info: dict[str, str]


class Recovery:
    """One worker process's lease, its record of held messages, and the restore of dead workers'."""

    def __init__(self, celery_app, nodename: str):
        self.app = celery_app
        self.nodename = nodename
        self.id = f"{nodename}:{uuid.uuid4().hex}"
        self.machine = machine_id()
        self.pid = os.getpid()
        self.connection = None
        self.channel = None
        self.client = None
        self.qos = None  # the task consumer's channel QoS (set by the HeldMessages consumer step)
        self._recorded: set[str] = set()
        self._streak_since: float | None = None  # monotonic time of the first of unbroken renewals
        self._last_sweep = 0.0
        self._last_error_logged = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.startup_log = _DeferredLog()

    # --- broker access -------------------------------------------------------------------------

    def connect(self) -> None:
        connection = self.app.connection_for_write()
        connection.ensure_connection(max_retries=3, interval_start=0.5, interval_step=0.5, interval_max=1)
        channel = connection.default_channel
        if getattr(channel, "global_keyprefix", ""):
            connection.release()
            raise RuntimeError("broker global_keyprefix is set: early restore of unacked messages is off")
        self.connection, self.channel, self.client = connection, channel, channel.client
        self._register = self.client.register_script(REGISTER)
        self._renew = self.client.register_script(RENEW)
        self._claim = self.client.register_script(CLAIM)

    def register(self) -> None:
        started = psutil.Process(self.pid).create_time()
        identity = {"nodename": self.nodename, "machine": self.machine or "", "pid": self.pid, "started": repr(started)}
        args = [self.id, LEASE_SECONDS]
        for field, value in identity.items():
            args += [field, value]
        self._register(keys=[REGISTRY_KEY, INFO_KEY.format(self.id)], args=args)
        self._streak_since = time.monotonic()

    def instances(self) -> tuple[float, list[Instance]]:
        """Redis server time and every other registered instance."""
        pipe = self.client.pipeline(transaction=True)
        pipe.time()
        pipe.zrange(REGISTRY_KEY, 0, -1, withscores=True)
        (seconds, micros), members = pipe.execute()
        now = seconds + micros / 1e6
        others = []
        for member, deadline in members:
            member = bytes_to_str(member)
            if member != self.id:
                info = {bytes_to_str(k): bytes_to_str(v) for k, v in self.client.hgetall(INFO_KEY.format(member)).items()}
                others.append(Instance(member, deadline, info))
        return now, others

    def proven_dead(self, instance: Instance) -> bool | None:
        """True/False when its process can be looked up from here, None when it runs elsewhere."""
        if not self.machine or instance.info.get("machine") != self.machine:
            return None
        try:
            return not process_exists(int(instance.info["pid"]), float(instance.info["started"]))
        except (KeyError, ValueError):
            return None

    def is_dead(self, instance: Instance, now: float) -> tuple[bool, bool]:
        """(dead, proven): proven means its process is gone (claimed even with a lease left)."""
        proven = self.proven_dead(instance)
        if proven is not None:
            return proven, proven
        renewing_for = 0.0 if self._streak_since is None else time.monotonic() - self._streak_since
        expired_for = now - instance.deadline
        return expired_for > GRACE_SECONDS and renewing_for > GRACE_SECONDS, False

    def claim(self, instance: Instance, proven: bool) -> bool:
        return bool(self._claim(keys=[REGISTRY_KEY, CLAIMED_KEY.format(instance.id)],
                                args=[instance.id, GRACE_SECONDS, "force" if proven else "expired"]))

    def forget(self, instance_id: str) -> None:
        self.client.delete(INFO_KEY.format(instance_id), HELD_KEY.format(instance_id))

    def restore_if_unchanged(self, tag: str, score: float) -> bool:
        """Give back the message `tag` through kombu, only if it is still the delivery scored `score`."""
        channel, restored = self.channel, []

        def transaction(pipe):
            restored.clear()
            if pipe.zscore(channel.unacked_index_key, tag) != score:
                return
            payload = pipe.hget(channel.unacked_key, tag)
            if payload is None:
                return
            pipe.multi()
            channel.qos._remove_from_indices(tag, pipe)
            message, exchange, routing_key = loads(bytes_to_str(payload))
            channel._do_restore_message(message, exchange, routing_key, pipe)
            restored.append(tag)

        self.client.transaction(transaction, channel.unacked_key, channel.unacked_index_key)
        return bool(restored)

    def _mutex(self):
        return Mutex(self.client, self.channel.unacked_mutex_key, self.channel.unacked_mutex_expire)

    # --- at worker start -------------------------------------------------------------------------

    def recover_at_start(self) -> int:
        """Restore the whole unacked set if no other worker may be alive; the number restored.

        Runs in worker_init, before Celery has set up its logging: what it says is logged at worker_ready.
        """
        log = self.startup_log
        # Taken after this worker registered: a worker that starts later is seen as alive, or
        # delivers only after this snapshot (new tags, or new scores that fence them off).
        snapshot = self.client.zrange(self.channel.unacked_index_key, 0, -1, withscores=True)
        if not snapshot:
            return 0
        now, others = self.instances()
        verdicts = [(instance, *self.is_dead(instance, now)) for instance in others]
        alive = [instance.info.get("nodename", instance.id) for instance, dead, _ in verdicts if not dead]
        if alive:
            log.info("%d unacked messages left as they are: worker %s may be alive", len(snapshot), ", ".join(alive))
            return 0
        replies = self.app.control.ping(timeout=PING_TIMEOUT)
        if replies:
            names = ", ".join(name for reply in replies for name in reply)
            log.info("%d unacked messages left as they are: worker %s answers", len(snapshot), names)
            return 0
        deadline = time.monotonic() + MUTEX_WAIT
        while True:
            try:
                with self._mutex():
                    for instance, _, proven in verdicts:
                        if self.claim(instance, proven):
                            self.forget(instance.id)
                    restored = sum(self.restore_if_unchanged(bytes_to_str(tag), score) for tag, score in snapshot)
                break
            except MutexHeld:
                if time.monotonic() > deadline:
                    log.warning("unacked messages not restored at start: another restore holds the mutex")
                    return 0
                time.sleep(0.2)
        log.warning("no other worker alive: restored %d of %d unacked messages at start", restored, len(snapshot))
        return restored

    # --- while the worker runs -----------------------------------------------------------------------

    def held_tags(self) -> set[str]:
        qos = self.qos
        if qos is None:
            return set()
        for _ in range(5):  # the consumer thread may change the dict while it is copied
            try:
                return set(qos._delivered) - set(qos._dirty)
            except RuntimeError:
                continue
        return set(self._recorded)

    def renew(self) -> None:
        held = self.held_tags()
        added, removed = sorted(held - self._recorded), sorted(self._recorded - held)
        result = self._renew(keys=[REGISTRY_KEY, HELD_KEY.format(self.id), self.channel.unacked_index_key,
                                   CLAIMED_KEY.format(self.id)],
                             args=[self.id, LEASE_SECONDS, len(added), *added, *removed])
        if result == -1:
            self.fence()
        if result == 0:
            log.warning("worker %s: its lease was gone from the broker without a claim (Redis flushed or "
                        "restarted without persistence): registering again", self.nodename)
            self.register()
            self._recorded = set()
            return
        self._recorded = held
        if self._streak_since is None:
            self._streak_since = time.monotonic()

    def fence(self) -> None:
        """This worker was taken for dead and its messages given to others: run and ack nothing more."""
        log.critical("worker %s lost its lease (paused or cut off for over %.0f s) and its messages were "
                     "restored to other workers: exiting without running them", self.nodename,
                     LEASE_SECONDS + GRACE_SECONDS)
        for child in psutil.Process(self.pid).children(recursive=True):
            try:
                child.kill()
            except psutil.Error:
                pass
        os._exit(EXIT_LEASE_LOST)

    def sweep(self) -> int:
        """Restore the recorded messages of every dead instance; the number restored."""
        now, others = self.instances()
        restored = 0
        for instance in others:
            dead, proven = self.is_dead(instance, now)
            if not dead:
                continue
            try:
                with self._mutex():
                    if not self.claim(instance, proven):
                        continue
                    held = self.client.hgetall(HELD_KEY.format(instance.id))
                    count = sum(self.restore_if_unchanged(bytes_to_str(tag), float(score))
                                for tag, score in held.items())
                    self.forget(instance.id)
            except MutexHeld:
                return restored  # another restore runs: next sweep
            restored += count
            log.warning("worker %s is dead: restored %d of the %d messages it held",
                        instance.info.get("nodename", instance.id), count, len(held))
        return restored

    def run(self) -> None:
        while not self._stop.wait(RENEW_INTERVAL):
            try:
                self.renew()
                if time.monotonic() - self._last_sweep >= SWEEP_INTERVAL:
                    self._last_sweep = time.monotonic()
                    self.sweep()
            except Exception as error:  # noqa: BLE001 - the broker may be away; keep trying
                self._streak_since = None
                if time.monotonic() - self._last_error_logged > 60:
                    self._last_error_logged = time.monotonic()
                    log.warning("worker lease not renewed: %s: %s", type(error).__name__, error)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="worker-lease", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def close(self) -> None:
        """At process exit (every task finished or killed): deregister, so nobody waits for the lease."""
        if os.getpid() != self.pid or self.client is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            self.client.zrem(REGISTRY_KEY, self.id)
            self.forget(self.id)
        except Exception:  # noqa: BLE001 - at exit, a broker that is away changes nothing
            pass


class _DeferredLog:
    """Log records kept until the worker's logging is set up."""

    def __init__(self):
        self.records: list[tuple[int, str, tuple]] = []

    def info(self, message, *args):
        self.records.append((logging.INFO, message, args))

    def warning(self, message, *args):
        self.records.append((logging.WARNING, message, args))

    def flush(self):
        records, self.records = self.records, []
        for level, message, args in records:
            log.log(level, message, *args)


_current: Recovery | None = None
_startup_errors: list[str] = []


@signals.worker_init.connect
def _recover_at_worker_start(sender=None, **_):
    global _current
    if _current is not None:  # one per process (an embedded test worker may start twice)
        return
    recovery = Recovery(sender.app, sender.hostname)
    try:
        recovery.connect()
        recovery.register()
    except Exception as error:  # noqa: BLE001 - without the broker, the worker itself retries
        _startup_errors.append(f"early restore of a dead worker's messages is off for this worker: {error}")
        return
    try:
        recovery.recover_at_start()
    except Exception as error:  # noqa: BLE001
        recovery.startup_log.warning("unacked messages not restored at start: %s: %s", type(error).__name__, error)
    _current = recovery
    recovery.start()


@signals.worker_shutdown.connect
def _deregister_at_worker_stop(**_):
    """The worker stopped (its process may go on: an embedded test worker): give the lease up."""
    global _current
    if _current is not None:
        _current.close()
        _current = None


@signals.worker_ready.connect
def _log_start_recovery(**_):
    for error in _startup_errors:
        log.warning("%s", error)
    _startup_errors.clear()
    if _current is not None:
        _current.startup_log.flush()


class HeldMessages(bootsteps.StartStopStep):
    """Points the lease thread at the task consumer's channel (again after each reconnection)."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c):
        if _current is not None and c.task_consumer is not None:
            _current.qos = c.task_consumer.channel.qos

    def stop(self, c):
        pass


app.steps["consumer"].add(HeldMessages)
