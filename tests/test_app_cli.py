"""python -m app deliveries as an operator runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(tmp_path, *args):
    env = {**os.environ, "VAR_DIR": str(tmp_path / "var")}
    env.pop("DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_import_list_show(tmp_path):
    csv_file = tmp_path / "d.csv"
    csv_file.write_text("reference,recipient_name,phone,address,carrier,tracking_number,deadline\n"
                        "CASE-1,张三,13800138000,北京市朝阳区建国路1号,ems,EM123456789CN,2026-12-31\n"
                        "CASE-2,,13800138000,北京市,ems,EM987654321CN,\n", encoding="utf-8")
    imported = run(tmp_path, "deliveries", "import", str(csv_file))
    assert imported.returncode == 1, "a rejected row makes the exit code non-zero"
    assert "line 3: recipient_name is empty" in imported.stderr
    assert "inserted 1, already registered 0, rejected 1" in imported.stdout

    listed = json.loads(run(tmp_path, "deliveries", "list", "--json").stdout)
    assert [d["tracking_number"] for d in listed] == ["EM123456789CN"]
    assert listed[0]["phone"] == "138****8000", "phones are masked"

    shown = json.loads(run(tmp_path, "deliveries", "show", str(listed[0]["id"]), "--json").stdout)
    assert shown["status"] == "pending" and shown["events"] == []
    assert (shown["evidence_status"], shown["evidence_error"]) == ("none", None)
    missing = run(tmp_path, "deliveries", "show", "999")
    assert missing.returncode == 1 and missing.stderr.strip() == "error: no delivery 999"


def test_help_for_every_action(tmp_path):
    for action in ("add", "import", "list", "show"):
        assert run(tmp_path, "deliveries", action, "--help").returncode == 0
