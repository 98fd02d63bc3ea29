"""python -m app deliveries as an operator runs it."""

import json

from tests.support.app_cli import run_app


def test_import_list_show(tmp_path):
    csv_file = tmp_path / "d.csv"
    csv_file.write_text("reference,recipient_name,phone,address,carrier,tracking_number,deadline\n"
                        "CASE-1,张三,13800138000,北京市朝阳区建国路1号,ems,EM123456789CN,2026-12-31\n"
                        "CASE-2,,13800138000,北京市,ems,EM987654321CN,\n", encoding="utf-8")
    imported = run_app(tmp_path / "var", "deliveries", "import", str(csv_file))
    assert imported.returncode == 1, "a rejected row makes the exit code non-zero"
    assert "line 3: recipient_name is empty" in imported.stderr
    assert "inserted 1, already registered 0, rejected 1" in imported.stdout

    listed = json.loads(run_app(tmp_path / "var", "deliveries", "list", "--json").stdout)
    assert [d["tracking_number"] for d in listed] == ["EM123456789CN"]
    assert listed[0]["phone"] == "138****8000", "phones are masked"

    shown = json.loads(run_app(tmp_path / "var", "deliveries", "show", str(listed[0]["id"]), "--json").stdout)
    assert shown["status"] == "pending" and shown["events"] == []
    assert (shown["evidence_status"], shown["evidence_error"]) == ("none", None)
    missing = run_app(tmp_path / "var", "deliveries", "show", "999")
    assert missing.returncode == 1 and missing.stderr.strip() == "error: no delivery 999"


def test_help_for_every_action(tmp_path):
    for action in ("add", "import", "list", "show"):
        assert run_app(tmp_path / "var", "deliveries", action, "--help").returncode == 0
