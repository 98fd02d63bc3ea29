"""Per-job scheduling policies, given as an entry's `policy` in beat_schedules.py."""

from dataclasses import dataclass

OVERLAP_CHOICES = ("skip", "allow")
MISSED_CHOICES = ("run_once", "skip")


class PolicyError(ValueError):
    """A `policy` an entry gives is not one beat can follow."""


@dataclass(frozen=True)
class JobPolicy:
    """What beat does when a run falls due.

    overlap: `skip` the run while the previous run of the job is still queued or running, or `allow` it.
    missed: for a run more than `grace` seconds late (beat was down, or no beat led), `run_once`
        sends it once however many were missed; `skip` records it as missed and waits for the next.
    jitter: delay each run by a random 0..jitter seconds, so heavy jobs due at the same minute spread out.
    """

    overlap: str = "skip"
    missed: str = "run_once"
    grace: float = 300.0
    jitter: float = 0.0


# A job in beat_schedules.py that names no policy.
DEFAULT_POLICY = JobPolicy()
# A job made in the admin, until a policy is saved for it: every due run is sent, as stock
# django-celery-beat does.
STOCK_POLICY = JobPolicy(overlap="allow")


def stored_policies(names: list[str] | None = None) -> dict[str, JobPolicy]:
    """The policy saved for each job (the sync writes those of beat_schedules.py), by job name;
    only for the jobs in `names` when given."""
    from app.scheduling.models import SchedulePolicy

    saved = SchedulePolicy.objects.all() if names is None else SchedulePolicy.objects.filter(task__name__in=names)
    rows = saved.values_list("task__name", "overlap", "missed", "grace", "jitter")
    return {name: JobPolicy(overlap, missed, grace, jitter) for name, overlap, missed, grace, jitter in rows}


def policy_of(entry: dict) -> JobPolicy:
    """The entry's policy with defaults filled in; PolicyError when a key or value is wrong."""
    given = entry.get("policy", {})
    if not isinstance(given, dict):
        raise PolicyError("'policy' must be a dict")
    unknown = set(given) - set(JobPolicy.__dataclass_fields__)
    if unknown:
        raise PolicyError(f"unknown policy keys {sorted(unknown)}")
    policy = JobPolicy(**given)
    if policy.overlap not in OVERLAP_CHOICES:
        raise PolicyError(f"overlap must be one of {OVERLAP_CHOICES}, not {policy.overlap!r}")
    if policy.missed not in MISSED_CHOICES:
        raise PolicyError(f"missed must be one of {MISSED_CHOICES}, not {policy.missed!r}")
    for key in ("grace", "jitter"):
        value = getattr(policy, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise PolicyError(f"{key} must be a number of seconds >= 0, not {value!r}")
    expires = entry.get("options", {}).get("expire_seconds")
    if expires is not None and policy.jitter >= expires:
        raise PolicyError(f"jitter {policy.jitter}s must be shorter than expire_seconds {expires}s, "
                          "or a delayed run would expire before it starts")
    return policy
