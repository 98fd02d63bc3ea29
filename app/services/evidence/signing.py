"""Who signed for a delivery and how, read from the carrier's sign event (Kuaidi100 texts).

Carriers state it in free text: "已签收，签收人：本人", "签收人：张三（他人代收）", "已由【丰巢智能快递柜】代收",
"EMS 已妥投，投递结果：他人收". The parse reads only what the text says; a text it does not know is
kept verbatim with the kind "unknown", never guessed.
"""

import re
from dataclasses import dataclass
from enum import StrEnum


class SigningKind(StrEnum):
    IN_PERSON = "in_person"
    PROXY = "proxy"  # signed or collected by someone else for the recipient
    LOCKER = "locker"  # put into a parcel locker
    STATION = "station"  # left at a collection point (驿站, 代收点)
    UNKNOWN = "unknown"


KIND_LABELS = {SigningKind.IN_PERSON: "本人签收 / signed by the recipient",
               SigningKind.PROXY: "他人代收 / collected by another person",
               SigningKind.LOCKER: "快递柜代收 / left in a parcel locker",
               SigningKind.STATION: "驿站代收 / left at a collection point",
               SigningKind.UNKNOWN: "未能识别 / not recognised (carrier text kept verbatim)"}

SIGNED_WORDS = ("签收", "代收", "妥投", "已取件", "投递结果")
NOT_SIGNED_WORDS = ("拒收", "拒签", "退回", "退签", "未签收", "无法签收")
LOCKER_WORDS = ("快递柜", "丰巢", "智能柜", "自提柜", "快件柜", "速递易", "格格柜")
STATION_WORDS = ("驿站", "代收点", "自提点", "服务站", "妈妈驿站", "兔喜")
IN_PERSON_WORDS = ("本人", "本人签收", "本人收")
PROXY_WORDS = ("他人代收", "代收", "他人收", "前台", "门卫", "家人", "同事", "物业", "收发室", "保安", "邻居", "单位收发")
# The signer after "签收人：" / "签收人是" / "投递结果：", up to the first separator.
SIGNER = re.compile(r"(?:签收人|投递结果)\s*(?:[:：是为]|\s)\s*[【\[]?(?P<signer>[^，,。；;\s【】\[\]]+)")
PARENTHESES = re.compile(r"[（(](?P<inside>[^）)]*)[）)]")


@dataclass(frozen=True)
class Signing:
    kind: SigningKind
    signer: str | None  # as the carrier names them ("本人", "张三", "丰巢智能快递柜"), None when unnamed
    text: str  # the carrier's sign event, verbatim

    @property
    def described(self) -> str:
        """The signer and kind as the receipt prints them."""
        if self.kind == SigningKind.UNKNOWN:
            return f"{KIND_LABELS[self.kind]}: {self.text}"
        return f"{self.signer}（{KIND_LABELS[self.kind]}）" if self.signer else KIND_LABELS[self.kind]


def is_sign_text(text: str | None, carrier_status: str | None = None) -> bool:
    """Whether an event says the shipment was signed for (and not refused or returned)."""
    if carrier_status == "签收":
        return True
    text = text or ""
    return any(word in text for word in SIGNED_WORDS) and not any(word in text for word in NOT_SIGNED_WORDS)


def _bracketed_place(text: str, words: tuple[str, ...]) -> str | None:
    """The 【name】 in `text` that contains one of `words` (e.g. 【丰巢智能快递柜】), or None."""
    for name in re.findall(r"【([^】]+)】", text):
        if any(word in name for word in words):
            return name
    return None


def _named_signer(text: str) -> tuple[str | None, str]:
    """The signer's name after "签收人：", and the words in parentheses after it (e.g. "他人代收")."""
    match = SIGNER.search(text)
    if not match:
        return None, ""
    signer = match["signer"]
    note = PARENTHESES.search(signer) or PARENTHESES.search(text[match.end():match.end() + 12])
    signer = PARENTHESES.sub("", signer).strip() or None
    return signer, note["inside"] if note else ""


def parse_signing(text: str, recipient_name: str | None = None) -> Signing:
    """The signer and kind of signing `text` states; UNKNOWN (text verbatim) when it states neither."""
    signer, note = _named_signer(text)
    if locker := _bracketed_place(text, LOCKER_WORDS):
        return Signing(SigningKind.LOCKER, locker, text)
    if station := _bracketed_place(text, STATION_WORDS):
        return Signing(SigningKind.STATION, station, text)
    if signer in IN_PERSON_WORDS or (signer and signer == recipient_name and not note):
        return Signing(SigningKind.IN_PERSON, signer, text)
    if any(word in note for word in PROXY_WORDS) or (signer and any(word in signer for word in PROXY_WORDS)):
        return Signing(SigningKind.PROXY, signer, text)
    if any(word in text for word in LOCKER_WORDS):
        return Signing(SigningKind.LOCKER, signer, text)
    if any(word in text for word in STATION_WORDS):
        return Signing(SigningKind.STATION, signer, text)
    if "他人代收" in text or "他人收" in text:
        return Signing(SigningKind.PROXY, signer, text)
    if "本人签收" in text and "非本人" not in text:
        return Signing(SigningKind.IN_PERSON, signer or "本人", text)
    if signer and recipient_name and signer != recipient_name:
        return Signing(SigningKind.PROXY, signer, text)
    return Signing(SigningKind.UNKNOWN, signer, text)
