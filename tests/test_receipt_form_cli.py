"""`python -m app deliveries add` with the receipt form's fields, and `receipts verify --qr`, as operators run them."""

import json

import pytest

from app.services.evidence.receipt import qr_claim_of
from tests.support.app_cli import run_app


def test_deliveries_add_takes_the_form_fields(tmp_path):
    var_dir = tmp_path / "var"
    added = run_app(var_dir, "deliveries", "add", "--reference", "R-1", "--recipient-name", "张三", "--phone",
                    "13800138000", "--address", "北京市朝阳区建国路1号", "--carrier", "ems", "--tracking-number",
                    "EM123456789CN", "--case-cause", "民间借贷纠纷", "--case-number", "（2026）京0105民初123号",
                    "--documents", "起诉状副本×1;传票×1", "--remarks", "请签收")
    assert added.returncode == 0, added.stderr
    shown = json.loads(run_app(var_dir, "deliveries", "show", "1", "--json").stdout)
    assert {key: shown[key] for key in ("case_cause", "case_number", "documents", "remarks")} == {
        "case_cause": "民间借贷纠纷", "case_number": "（2026）京0105民初123号", "documents": "起诉状副本×1;传票×1",
        "remarks": "请签收"}
    refused = run_app(var_dir, "deliveries", "add", "--reference", "R-2", "--recipient-name", "李四", "--phone",
                      "13800138000", "--address", "上海市", "--carrier", "ems", "--tracking-number", "EM2222222",
                      "--documents", "传票×0")
    assert refused.returncode == 1 and "a document count must be 1 or more" in refused.stderr


@pytest.mark.needs_cjk_font
def test_receipts_verify_qr_checks_a_scanned_code(cli_delivery):
    var_dir, delivery_id = cli_delivery
    assert run_app(var_dir, "receipts", "generate", str(delivery_id)).returncode == 0
    [shown] = json.loads(run_app(var_dir, "receipts", "show", str(delivery_id), "--json").stdout)
    claim = qr_claim_of(var_dir / "files" / shown["path"])

    verified = run_app(var_dir, "receipts", "verify", "--qr", claim.payload)
    assert verified.returncode == 0 and verified.stdout.strip() == (
        f"OK: QR code matches receipt {shown['receipt_number']} of delivery {delivery_id} "
        f"(issued file sha256 {shown['sha256']})")
    forged = run_app(var_dir, "receipts", "verify", "--qr", claim.payload[:-64] + "0" * 64)
    assert forged.returncode == 1 and forged.stdout.startswith("MISMATCH: QR code of receipt")
    neither = run_app(var_dir, "receipts", "verify")
    assert neither.returncode == 2 and neither.stderr.strip().endswith("Error: give either FILE or --qr TEXT")
