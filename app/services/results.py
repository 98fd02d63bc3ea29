"""Result-backend housekeeping: no Celery result key may live forever."""

import logging

import redis

log = logging.getLogger(__name__)

RESULT_KEY_PATTERNS = ("celery-task-meta-*", "celery-taskset-meta-*", "chord-unlock-*")
SCAN_BATCH = 500


def expire_orphaned_results(client: redis.Redis, expires_seconds: int) -> dict:
    """Give `expires_seconds` to every result key that has no expiry; scanned in batches."""
    scanned = fixed = 0
    for pattern in RESULT_KEY_PATTERNS:
        batch = []
        for key in client.scan_iter(match=pattern, count=SCAN_BATCH):
            batch.append(key)
            if len(batch) >= SCAN_BATCH:
                fixed += _expire_persistent(client, batch, expires_seconds)
                scanned += len(batch)
                batch = []
        fixed += _expire_persistent(client, batch, expires_seconds)
        scanned += len(batch)
    if fixed:
        log.info("gave an expiry of %ds to %d result keys that had none", expires_seconds, fixed)
    return {"keys_scanned": scanned, "keys_given_expiry": fixed}


def _expire_persistent(client: redis.Redis, keys: list, expires_seconds: int) -> int:
    if not keys:
        return 0
    pipeline = client.pipeline(transaction=False)
    for key in keys:
        pipeline.ttl(key)
    persistent = [key for key, ttl in zip(keys, pipeline.execute()) if ttl == -1]
    pipeline = client.pipeline(transaction=False)
    for key in persistent:
        # NX: a key that gained an expiry meanwhile keeps it.
        pipeline.expire(key, expires_seconds, nx=True)
    return sum(bool(done) for done in pipeline.execute())
