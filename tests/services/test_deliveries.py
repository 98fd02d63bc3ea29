"""Registering deliveries from CSV on SQLite and PostgreSQL: bad rows named by line, no duplicates."""

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from app.core.migrations import upgrade_app_schema
from app.models import Delivery
from app.services.deliveries import (
    CSV_HEADER,
    DeliveryInputError,
    add_delivery,
    csv_encoding,
    import_csv,
    mask_address,
    mask_phone,
)

CSV_HEADER_LINE = ",".join(CSV_HEADER)

CSV = """reference,recipient_name,phone,address,carrier,tracking_number,deadline
CASE-1,张三,13800138000,北京市朝阳区建国路1号,ems,EM123456789CN,2026-12-31
CASE-2,李四,13900139000,上海市,SHUNFENG,SF1234567890,
CASE-3,,13900139000,上海市,ems,EM2222222,2026-12-31
CASE-4,王五,abc,上海市,ems,EM3333333,
CASE-5,赵六,13700137000,广州市,ems,EM4444444,2026-13-01
CASE-6,钱七,13700137000,广州市,ems,EM123456789CN,
"""


@pytest.fixture
def session(sa_engine):
    upgrade_app_schema(sa_engine)
    with sessionmaker(bind=sa_engine)() as session:
        yield session


def test_import_reports_bad_rows_by_line_and_inserts_the_rest(session, tmp_path):
    path = tmp_path / "deliveries.csv"
    path.write_text(CSV, encoding="utf-8")
    report = import_csv(session, path)
    session.commit()
    assert report.inserted == 2 and report.duplicates == 1
    assert report.errors == [(4, "recipient_name is empty"), (5, "phone is not a phone number"),
                             (6, "deadline '2026-13-01' is not an ISO date (YYYY-MM-DD)")]
    carriers = dict(session.execute(select(Delivery.tracking_number, Delivery.carrier)).all())
    assert carriers == {"EM123456789CN": "ems", "SF1234567890": "shunfeng"}


def test_importing_twice_creates_no_duplicates(session, tmp_path):
    path = tmp_path / "deliveries.csv"
    path.write_text(CSV, encoding="utf-8")
    import_csv(session, path)
    session.commit()
    second = import_csv(session, path)
    session.commit()
    assert second.inserted == 0 and second.duplicates == 3
    assert session.scalar(select(func.count()).select_from(Delivery)) == 2


def test_missing_header_is_one_clear_error(session, tmp_path):
    path = tmp_path / "wrong.csv"
    path.write_text("ref,name\nA,B\n", encoding="utf-8")
    with pytest.raises(DeliveryInputError, match="header lacks reference"):
        import_csv(session, path)


def test_add_refuses_a_registered_number(session):
    fields = {"reference": "R", "recipient_name": "N", "phone": "13800000000", "address": "A",
              "carrier": "ems", "tracking_number": "EM5555555"}
    add_delivery(session, fields)
    with pytest.raises(DeliveryInputError, match="already delivery"):
        add_delivery(session, fields)


def test_masking():
    assert mask_phone("138-0013-8000") == "138****8000"
    assert mask_address("北京市朝阳区建国路1号") == "北京市朝阳区…"


# 𠀀 and 䶮 are outside GBK: GB18030 encodes them in four bytes.
CHINESE_ROWS = [("CASE-7", "张三丰", "北京市朝阳区建国路1号 “东门”"), ("CASE-8", "欧阳娜娜", "上海市浦东新区世纪大道100号")]
GB18030_ROW = ("CASE-9", "龑䶮", "广州市越秀区𠀀路9号")


def chinese_csv(rows, newline: str) -> str:
    lines = [",".join(CSV_HEADER)] + [f"{reference},{name},13800138000,{address},ems,EM{index:07d},"
                                      for index, (reference, name, address) in enumerate(rows)]
    return newline.join(lines) + newline


@pytest.mark.parametrize(("encoding", "newline", "rows", "detected"), [
    ("utf-8", "\n", CHINESE_ROWS, "utf-8"),
    ("utf-8", "\r\n", CHINESE_ROWS, "utf-8"),
    ("utf-8-sig", "\r\n", CHINESE_ROWS, "utf-8-sig"),
    ("gbk", "\r\n", CHINESE_ROWS, "gb18030"),  # Excel on Chinese Windows, "CSV (comma delimited)"
    ("gb18030", "\n", [*CHINESE_ROWS, GB18030_ROW], "gb18030"),
])
def test_import_reads_utf8_bom_gbk_gb18030_with_lf_or_crlf_exactly(session, tmp_path, encoding, newline, rows,
                                                                  detected):
    path = tmp_path / "deliveries.csv"
    path.write_bytes(chinese_csv(rows, newline).encode(encoding))
    report = import_csv(session, path)
    session.commit()
    assert (report.inserted, report.errors, report.warnings) == (len(rows), [], [])
    assert csv_encoding(path) == detected
    stored = session.execute(select(Delivery.reference, Delivery.recipient_name, Delivery.address)
                             .order_by(Delivery.reference)).all()
    assert [tuple(row) for row in stored] == rows


def first_undecodable_byte(data: bytes, encoding: str) -> int:
    try:
        data.decode(encoding)
    except UnicodeDecodeError as error:
        return error.start
    raise AssertionError(f"decodes as {encoding}")


@pytest.mark.parametrize("encoding", ["utf-8", "gbk"])
def test_a_file_in_neither_encoding_is_one_error_naming_the_byte_offset(session, tmp_path, encoding):
    path = tmp_path / "broken.csv"
    data = chinese_csv(CHINESE_ROWS * 4000, "\n").encode(encoding) + b"\xff" + b"tail\n"  # over 10 decoding chunks
    path.write_bytes(data)
    with pytest.raises(DeliveryInputError) as refused:
        import_csv(session, path)
    assert str(refused.value) == (f"{path}: neither UTF-8 (byte offset {first_undecodable_byte(data, 'utf-8')} is not) "
                                  f"nor GB18030/GBK (byte offset {first_undecodable_byte(data, 'gb18030')} is not); "
                                  "save it as CSV UTF-8")
    assert data.index(b"\xff") in (first_undecodable_byte(data, "utf-8"), first_undecodable_byte(data, "gb18030"))
    assert session.scalar(select(func.count()).select_from(Delivery)) == 0


def test_a_bom_means_utf8_even_if_the_rest_is_not(session, tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + CSV_HEADER_LINE.encode() + b"\n" + "张三".encode("gbk"))
    with pytest.raises(DeliveryInputError, match=rf"bom.csv: starts with a UTF-8 BOM but byte offset "
                                                 rf"{3 + len(CSV_HEADER_LINE) + 1} is not UTF-8"):
        import_csv(session, path)


def test_an_unknown_column_is_a_warning_and_the_rows_are_imported(session, tmp_path):
    path = tmp_path / "deliveries.csv"
    path.write_text("备注," + CSV_HEADER_LINE + "\n加急,CASE-1,张三,13800138000,北京市,ems,EM1234567,\n", encoding="utf-8")
    report = import_csv(session, path)
    assert (report.inserted, report.errors, report.warnings) == (1, [], ["unknown column '备注' ignored"])


def test_a_missing_column_is_one_error_deadline_included(session, tmp_path):
    path = tmp_path / "deliveries.csv"
    for missing in CSV_HEADER:
        path.write_text(",".join(name for name in CSV_HEADER if name != missing) + "\nA,B,C,D,E,F\n", encoding="utf-8")
        with pytest.raises(DeliveryInputError) as refused:
            import_csv(session, path)
        assert str(refused.value) == f"deliveries.csv: header lacks {missing}; expected {CSV_HEADER_LINE}"


def test_rows_with_too_many_or_too_few_fields_or_a_huge_field_are_rejected_by_line(session, tmp_path):
    path = tmp_path / "deliveries.csv"
    path.write_text(CSV_HEADER_LINE + "\n"
                    "CASE-1,张三,13800138000,北京市,朝阳区,ems,EM1234567,\n"  # an unquoted comma in the address
                    "CASE-2,李四,13800138000,北京市,ems,EM7654321\n"
                    f"CASE-3,王五,13800138000,\"{'长' * 200_000}\",ems,EM1111111,\n"
                    "CASE-4,赵六,13800138000,\"北京市,朝阳区\",ems,EM2222222,2026-12-31\n", encoding="utf-8")
    report = import_csv(session, path)
    assert report.errors == [(2, "has 8 fields, the header has 7 (an unquoted comma in a field?)"),
                             (3, "has 6 fields, the header has 7 (an unquoted comma in a field?)"),
                             (4, "not readable as CSV: field larger than field limit (131072)")]
    assert report.inserted == 1
    path.write_text(f"\"{'长' * 200_000}\"\n", encoding="utf-8")
    with pytest.raises(DeliveryInputError, match="^deliveries.csv: the header is not readable as CSV: field larger"):
        import_csv(session, path)


def test_the_receipt_form_columns_are_optional_and_stored(session, tmp_path):
    path = tmp_path / "deliveries.csv"
    path.write_text(f"{CSV_HEADER_LINE},case_cause,case_number,documents,remarks,colour\n"
                    "CASE-1,张三,13800138000,北京市朝阳区建国路1号,ems,EM123456789CN,,民间借贷纠纷,"
                    "（2026）京0105民初123号,起诉状副本×1;传票×1,请签收,red\n"
                    "CASE-2,李四,13900139000,上海市,ems,EM2222222,,,,,,\n"
                    "CASE-3,王五,13900139000,上海市,ems,EM3333333,,,,传票×0,,\n", encoding="utf-8")
    report = import_csv(session, path)
    session.commit()
    assert report.inserted == 2
    assert report.warnings == ["unknown column 'colour' ignored"], "the four form columns are known"
    assert report.errors == [(4, "documents '传票×0': a document count must be 1 or more")]
    rows = session.execute(select(Delivery.reference, Delivery.case_cause, Delivery.case_number, Delivery.documents,
                                  Delivery.remarks).order_by(Delivery.reference)).all()
    assert [tuple(row) for row in rows] == [
        ("CASE-1", "民间借贷纠纷", "（2026）京0105民初123号", "起诉状副本×1;传票×1", "请签收"),
        ("CASE-2", None, None, None, None)]


def test_a_csv_without_the_form_columns_still_imports(session, tmp_path):
    path = tmp_path / "deliveries.csv"
    path.write_text(f"{CSV_HEADER_LINE}\nCASE-1,张三,13800138000,北京市,ems,EM123456789CN,\n", encoding="utf-8")
    report = import_csv(session, path)
    assert (report.inserted, report.warnings, report.errors) == (1, [], [])


@pytest.mark.parametrize(("documents", "parsed"), [
    ("起诉状副本×1;传票×2", [("起诉状副本", 1), ("传票", 2)]),
    ("起诉状副本 x 1；应诉通知书*3; 举证通知书", [("起诉状副本", 1), ("应诉通知书", 3), ("举证通知书", None)]),
    ("", []), (None, [])])
def test_documents_are_parsed_into_names_and_counts(documents, parsed):
    from app.services.deliveries import parse_documents

    assert parse_documents(documents) == parsed
