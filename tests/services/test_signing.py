"""The signer and kind of signing read from real carrier sign texts (Kuaidi100, EMS, SF, lockers, stations)."""

import pytest

from app.services.evidence.signing import SigningKind, is_sign_text, parse_signing

IN_PERSON, PROXY, LOCKER, STATION, UNKNOWN = (SigningKind.IN_PERSON, SigningKind.PROXY, SigningKind.LOCKER,
                                              SigningKind.STATION, SigningKind.UNKNOWN)
TEXTS = [
    ("已签收，签收人：本人", IN_PERSON, "本人"),
    ("【北京市】已签收，签收人：本人，如有疑问请联系派件员13800138000", IN_PERSON, "本人"),
    ("已签收,签收人是【本人签收】", IN_PERSON, "本人签收"),
    ("您的快件已妥投，投递结果：本人收", IN_PERSON, "本人收"),
    ("已签收，本人签收", IN_PERSON, "本人"),
    ("已签收，签收人：张三", IN_PERSON, "张三"),  # the recipient's own name
    ("已签收，签收人：张三（他人代收）", PROXY, "张三"),
    ("您的快件已签收，签收人：李四(他人代收)，感谢使用", PROXY, "李四"),
    ("已签收，签收人：前台代收", PROXY, "前台代收"),
    ("快件已签收，签收人：门卫", PROXY, "门卫"),
    ("已签收，感谢使用顺丰，期待再次为您服务 签收人：家人", PROXY, "家人"),
    ("已妥投，投递结果：他人收", PROXY, "他人收"),
    ("已签收，签收人：王五", PROXY, "王五"),  # named, not the recipient
    ("他人代收", PROXY, None),
    ("您的快件已由【丰巢智能快递柜】代收，请凭取件码及时取件", LOCKER, "丰巢智能快递柜"),
    ("快件已投递至快递柜，取件码 123456", LOCKER, None),
    ("已签收，签收人：丰巢", LOCKER, "丰巢"),
    ("您的快件已被【菜鸟驿站】代收，地址：朝阳区建国路1号", STATION, "菜鸟驿站"),
    ("快件已放至代收点，请及时领取", STATION, None),
    ("已签收，签收人凭取货码签收。", UNKNOWN, None),
    ("投递完成", UNKNOWN, None),
]


@pytest.mark.parametrize(("text", "kind", "signer"), TEXTS)
def test_signing_is_read_from_the_carrier_text(text, kind, signer):
    signing = parse_signing(text, recipient_name="张三")
    assert (signing.kind, signing.signer, signing.text) == (kind, signer, text)


def test_an_unknown_text_is_kept_verbatim_on_the_receipt():
    assert parse_signing("投递完成").described == "未能识别 / not recognised (carrier text kept verbatim): 投递完成"
    assert parse_signing("已签收，签收人：张三（他人代收）").described == "张三（他人代收 / collected by another person）"


@pytest.mark.parametrize(("text", "status", "signed"), [
    ("已签收，签收人：本人", None, True), ("您的快件已由【丰巢智能快递柜】代收", None, True),
    ("已妥投", None, True), ("收件人拒收", None, False), ("退回件已签收", None, False),
    ("【上海】派件中", None, False), ("派送完成", "签收", True)])
def test_which_event_is_the_sign_event(text, status, signed):
    assert is_sign_text(text, status) is signed
