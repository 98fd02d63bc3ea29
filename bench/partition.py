"""Partition: three hosts in network namespaces, the leader's host cut off and healed, then the leader
SIGKILLed; how long takeover and recovery take, and whether any run is doubled or lost.

    python bench/partition.py [--leader-timeout 10] [--partition 40] [--resume-wait 90]
                              [--app-from REV] [--logs] [--keep]

Runs the scenario of tests/test_multi_host.py (tests/support/netns.py has it and documents the
network): a data namespace with its own Redis (AOF) and PostgreSQL, two app namespaces (hostnames
appa, appb) each with a worker and a beat of a copy of this project, two probe jobs every 1 and 2 s.
Tasks run on both workers; the leader's host is cut off for --partition seconds (its bridge port
drops every frame, silently) and healed; once its worker took a task again (or --resume-wait
passed), the leader is killed with SIGKILL. Prints

  - takeover after the partition: the cut to the standby's first send (and to its taking the lease);
  - when the cut host's beat and worker first logged a warning or an error (noticing the cut);
  - the heal to the cut worker's next task received, and to its beat's next heartbeat;
  - takeover after kill -9 of the leader: the kill to the survivor's first send;
  - duplicates (due runs recorded twice, task ids run twice: 0) and lost runs (published, never run: 0);
  - ratios: each takeover / BEAT_LEADER_TIMEOUT (target <= 1.0), heal-to-next-task / 10 s (target
    <= 1.0), and the partition takeover against the kill -9 takeover measured in the same run
    (a silent partition should cost the standby no more than a crash).

--app-from REV runs the app as it is at a git revision (`git archive REV app`, read only) instead
of the working tree, for a before/after. Needs root, iproute2, util-linux, redis-server and the
PostgreSQL server binaries; exits 2 naming what is missing. Takes about two minutes; nothing of a
real deployment is touched (DATABASE_URL, CELERY_BROKER_URL and the like are ignored).
"""

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leader-timeout", type=float, default=10.0, help="BEAT_LEADER_TIMEOUT of both beats")
    parser.add_argument("--partition", type=float, default=40.0, help="seconds the leader's host stays cut off")
    parser.add_argument("--resume-wait", type=float, default=90.0,
                        help="seconds to wait after the heal for the cut worker's next task")
    parser.add_argument("--app-from", metavar="REV",
                        help="run the app of this git revision (default: the working tree)")
    parser.add_argument("--logs", action="store_true", help="also print what the cut host's beat and worker logged")
    parser.add_argument("--keep", action="store_true", help="keep the project copies and the data directory")
    args = parser.parse_args()

    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "BEAT_LEADER_TIMEOUT", "APP_HOME",
                 "VAR_DIR", "LOGS_DIR"):
        os.environ.pop(name, None)
    os.environ.update(APP_ENV_FILE="", DJANGO_SETTINGS_MODULE="app.core.django_settings")
    sys.path.insert(0, str(ROOT))
    from tests.support import netns

    reason = netns.missing()
    if reason:
        print(f"partition bench not run: {reason}", file=sys.stderr)
        sys.exit(2)
    outcome = netns.run_scenario(leader_timeout=args.leader_timeout, partition_seconds=args.partition,
                                 resume_wait=args.resume_wait, app_from=args.app_from, keep=args.keep)
    print(outcome.report())
    if args.logs:
        print(outcome.log_report())


if __name__ == "__main__":
    main()
