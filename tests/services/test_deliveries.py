"""Registering deliveries from CSV on SQLite and PostgreSQL: bad rows named by line, no duplicates."""

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from app.core.migrations import upgrade_app_schema
from app.models import Delivery
from app.services.deliveries import DeliveryInputError, add_delivery, import_csv, mask_address, mask_phone

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
