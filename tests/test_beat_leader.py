"""The leader lease, heartbeat, due slots, job policies and table checks, on real Redis servers."""

import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import redis
from celery.schedules import crontab, schedule

from app.scheduling.job_policy import DEFAULT_POLICY, JobPolicy, PolicyError, policy_of
from app.scheduling.leader import Leadership, beat_liveness, lease_holder, lease_timing
from app.scheduling.slots import latest_slot
from app.scheduling.table import entry_problems
from tests.support.waiting import wait_until

SHANGHAI = ZoneInfo("Asia/Shanghai")
TIMEOUT = 3.0


@pytest.fixture
def client(broker_client):
    """The embedded broker and the machine's Redis, with no beat in them."""
    client = broker_client
    client.delete("beat:leader", *client.keys("beat:heartbeat:*"))
    return client


def test_lease_timing_keeps_failover_within_the_timeout():
    interval, ttl = lease_timing(30, 5)
    assert (interval, ttl) == (5, 25)
    interval, ttl = lease_timing(4, 5)
    assert interval == 1 and interval + ttl == 4


def test_one_leader_among_beats_and_a_standby_takes_over_after_the_leader_dies(client):
    first, second = Leadership(client, TIMEOUT, 5), Leadership(client, TIMEOUT, 5)
    assert first.renew() and not second.renew()
    assert lease_holder(client) == first.identity
    assert first.renew() and not second.renew(), "the holder extends, the standby keeps waiting"

    died = time.monotonic()  # `first` stops ticking, as a killed process does
    wait_until(lambda: second.renew())
    assert time.monotonic() - died <= TIMEOUT + second.tick_interval
    assert lease_holder(client) == second.identity
    assert not first.renew(), "a leader that comes back from a pause finds the lease taken"


def test_clean_release_hands_over_at_the_standbys_next_tick(client):
    first, second = Leadership(client, 30, 5), Leadership(client, 30, 5)
    assert first.renew()
    first.release()
    assert second.renew()


def test_liveness_reports_the_leader_and_a_stale_heartbeat_as_down(client):
    beat = Leadership(client, TIMEOUT, 5)
    assert not beat_liveness(client, TIMEOUT).ok
    beat.renew()
    alive = beat_liveness(client, TIMEOUT)
    assert alive.ok and alive.detail.startswith(f"{beat.identity} leads")
    wait_until(lambda: not beat_liveness(client, TIMEOUT).ok, timeout=TIMEOUT * 3)
    down = beat_liveness(client, TIMEOUT)
    assert "no beat leads" in down.detail and beat.identity in down.detail


def test_unreachable_redis_means_not_leading_and_no_traceback(tmp_path):
    beat = Leadership(redis.Redis(unix_socket_path=str(tmp_path / "none.sock"), socket_connect_timeout=1), TIMEOUT, 5)
    assert beat.renew() is False


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=SHANGHAI)


def test_crontab_slot_is_the_latest_due_minute_whatever_the_last_run():
    every_five = crontab(minute="*/5")
    every_five.tz = SHANGHAI
    now = at("2026-11-29 10:07:30")
    assert latest_slot(every_five, at("2026-11-29 10:04:00"), now) == at("2026-11-29 10:05:00")
    assert latest_slot(every_five, at("2026-11-29 09:00:00"), now) == at("2026-11-29 10:05:00")
    assert latest_slot(every_five, at("2026-11-20 09:00:00"), now) == at("2026-11-29 10:05:00")


def test_daily_slot_after_downtime_is_todays_not_the_first_missed():
    nightly = crontab(minute=0, hour=2)
    nightly.tz = SHANGHAI
    assert latest_slot(nightly, at("2026-11-25 02:00:05"), at("2026-11-29 09:00:00")) == at("2026-11-29 02:00:00")


def test_interval_slot_counts_whole_periods_from_the_last_run():
    every_ten = schedule(timedelta(seconds=10))
    last = at("2026-11-29 10:00:00")
    assert latest_slot(every_ten, last, at("2026-11-29 10:00:10.5")) == at("2026-11-29 10:00:10")
    assert latest_slot(every_ten, last, at("2026-11-29 10:00:35")) == at("2026-11-29 10:00:30")


def entry(**policy):
    return {"task": "app.tasks.file_tasks.cleanup_temp_files", "schedule": crontab(minute=10),
            "options": {"queue": "low_priority", "expire_seconds": 3600}, **({"policy": policy} if policy else {})}


def test_policy_defaults_are_the_safe_ones():
    assert policy_of(entry()) == DEFAULT_POLICY == JobPolicy(overlap="skip", missed="run_once", grace=300, jitter=0)
    assert policy_of(entry(overlap="allow", jitter=30)) == JobPolicy(overlap="allow", jitter=30)


@pytest.mark.parametrize(("policy", "message"), [
    ({"overlap": "queue"}, "overlap must be one of"),
    ({"missed": "all"}, "missed must be one of"),
    ({"grace": -1}, "grace must be a number"),
    ({"jitter": 3600}, "must be shorter than expire_seconds"),
    ({"retries": 3}, "unknown policy keys"),
])
def test_bad_policy_is_refused(policy, message):
    with pytest.raises(PolicyError, match=message):
        policy_of(entry(**policy))


def test_table_check_names_each_bad_entry_and_passes_the_good_ones():
    table = {"good": entry(), "typo": {**entry(), "task": "app.tasks.file_tasks.cleanup_temp_file"},
             "bad-policy": entry(missed="never")}
    problems = entry_problems(table, {"app.tasks.file_tasks.cleanup_temp_files"})
    assert problems == ["typo: unknown task 'app.tasks.file_tasks.cleanup_temp_file' (no such task is registered)",
                        "bad-policy: policy: missed must be one of ('run_once', 'skip'), not 'never'"]
