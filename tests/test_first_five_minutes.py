"""A new user's first five minutes, as README shows them: start the embedded default, add one delivery,
watch it reach "delivered" with its receipt, with no setting changed (the simulator's demo pace)."""

import json
from datetime import datetime

import pytest

from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

# The README promises about five minutes; the demo pace normally takes well under one.
FIRST_FIVE_MINUTES = 300


@pytest.mark.needs_cjk_font
@pytest.mark.needs_chromium
def test_a_delivery_added_through_the_cli_has_its_receipt_within_five_minutes(embedded_project):
    project = embedded_project
    for variable in ("SIMULATOR_PACE", "TRACKING_POLL_INTERVAL"):  # the defaults, as a new user has them
        project.env.pop(variable, None)
    started = project.manager("start", "--service", "all")
    assert started.returncode == 0, started.stderr

    added = project.app_cli("deliveries", "add", "--reference", "CASE-1", "--recipient-name", "张三",
                            "--phone", "13800138000", "--address", "北京市朝阳区建国路1号", "--carrier", "ems",
                            "--tracking-number", "EM100000001CN")
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith("registered delivery 1: ems EM100000001CN\npolling it now"), added.stdout

    def receipts():
        shown = project.app_cli("receipts", "show", "1", "--json")
        return shown.returncode == 0 and json.loads(shown.stdout)

    issued = wait_until(receipts, timeout=FIRST_FIVE_MINUTES, what="the delivery's receipt",
                        detail=lambda: project.log_text("celery_worker.log")[-3000:])
    assert len(issued) == 1
    delivery = json.loads(project.app_cli("deliveries", "show", "1", "--json").stdout)
    assert delivery["status"] == "delivered"
    times = [datetime.fromisoformat(event["time"]) for event in delivery["events"]]
    assert len(times) == 5 and times == sorted(times), "collected, two scans, out for delivery, signed: in order"
    registered_at = datetime.fromisoformat(delivery["created_at"])
    assert times[0] < registered_at < times[-1], "collected before registration, signed after"
    verified = project.app_cli("receipts", "verify", issued[0]["file"])
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert project.manager("stop", "--service", "all").returncode == 0
