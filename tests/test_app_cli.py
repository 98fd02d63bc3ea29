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


HEADER = "reference,recipient_name,phone,address,carrier,tracking_number,deadline"


def test_import_reads_an_excel_gbk_csv_with_crlf_and_warns_of_an_unknown_column(tmp_path):
    csv_file = tmp_path / "excel.csv"
    csv_file.write_bytes(f"{HEADER},备注\r\n案-001,欧阳娜娜,13800138000,北京市朝阳区,ems,EM123456789CN,,加急\r\n"
                         .encode("gbk"))
    imported = run_app(tmp_path / "var", "deliveries", "import", str(csv_file))
    assert (imported.returncode, imported.stderr) == (0, "warning: excel.csv: unknown column '备注' ignored\n")
    assert imported.stdout == "inserted 1, already registered 0, rejected 0\n"
    [listed] = json.loads(run_app(tmp_path / "var", "deliveries", "list", "--json").stdout)
    assert (listed["reference"], listed["recipient_name"], listed["address"]) == ("案-001", "欧阳娜娜", "北京市朝阳区")


def test_import_without_a_deadline_column_is_one_error_line(tmp_path):
    csv_file = tmp_path / "old.csv"
    csv_file.write_text("reference,recipient_name,phone,address,carrier,tracking_number\n"
                        "CASE-1,张三,13800138000,北京市,ems,EM123456789CN\n", encoding="utf-8")
    imported = run_app(tmp_path / "var", "deliveries", "import", str(csv_file))
    assert imported.returncode == 1 and imported.stdout == ""
    assert imported.stderr == f"error: old.csv: header lacks deadline; expected {HEADER}\n"


def test_import_of_a_file_in_neither_utf8_nor_gb18030_is_one_error_line(tmp_path):
    csv_file = tmp_path / "utf16.csv"
    csv_file.write_bytes(f"{HEADER}\n".encode("utf-16"))  # Excel's "Unicode text"
    imported = run_app(tmp_path / "var", "deliveries", "import", str(csv_file))
    assert imported.returncode == 1 and imported.stdout == ""
    assert imported.stderr == (f"error: {csv_file}: neither UTF-8 (byte offset 0 is not) nor GB18030/GBK "
                               "(byte offset 0 is not); save it as CSV UTF-8\n")
