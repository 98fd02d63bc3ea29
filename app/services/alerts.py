"""Alert incidents: one webhook message when a problem opens, one when it clears, every one logged.

An incident is keyed by what failed (`health:database`, `disk:/srv/var`, `job:backup-database`,
`stall:cleanup-logs` ...). Raising an open key only notes it is still going on; an opening alert
the robot did not accept is sent again by the next raise. Messages go to ALERT_WEBHOOK_URL, a
WeCom (企业微信) or DingTalk (钉钉) group robot, as markdown in Chinese and English.
"""

import hashlib
import logging
import re
import socket
from dataclasses import dataclass
from datetime import date, datetime
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo

import httpx
from sqlalchemy import select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

import app.core.logging  # noqa: F401  (keeps httpx from logging request URLs, which carry the robot's key)
from app.core.config import TIMEZONE
from app.core.database import session_scope
from app.models import AlertIncident, Delivery
from app.models.base import utcnow
from app.services.disk import CRITICAL, OK, VolumeUsage
from app.services.health import Check, HealthReport
from app.services.tracking import ACTIVE_STATUSES

log = logging.getLogger("app.alerts")

WARNING = "warning"
SEVERITY_OF_STATUS = {"warn": WARNING, CRITICAL: CRITICAL}
SEVERITY_WORDS = {WARNING: "警告 WARNING", CRITICAL: "严重 CRITICAL"}
# Short, because sending happens while the incident's lock is held (see _lock).
WEBHOOK_TIMEOUT = httpx.Timeout(5.0, connect=3.0)
SUMMARY_CHARS = 1000  # WeCom takes at most 4096 bytes of markdown
DINGTALK_PATH = "/robot/send"
SHANGHAI = ZoneInfo(TIMEZONE)


@dataclass(frozen=True)
class Message:
    title: str
    text: str  # markdown


def raise_incident(factory: sessionmaker, key: str, severity: str, summary: str, now: datetime | None = None,
                   *, webhook_url: str | None = None) -> AlertIncident | None:
    """Open an incident for `key` and alert once, or note that the open one is still going on."""
    now = now or utcnow()
    summary = summary[:SUMMARY_CHARS]
    sent: list[bool] = []
    try:
        return _raise_recorded(factory, key, severity, summary, now, webhook_url, sent)
    except SQLAlchemyError as error:
        # Nowhere to remember it (the database is down, say): alert anyway, every time.
        log.error("incident store unavailable (%s): alerting %s without de-duplication", type(error).__name__, key)
        incident = AlertIncident(key=key, severity=severity, summary=summary, opened_at=now, last_seen_at=now)
        _log_alert(incident)
        if not sent:  # the store failed after the alert went out (its commit, say): sent once is enough
            deliver(webhook_url, alert_message(incident, unrecorded=True))
        return None


def _raise_recorded(factory, key, severity, summary, now, webhook_url, sent: list | None = None) -> AlertIncident:
    """`sent` (if given) gets an item once the alert was delivered, even if the transaction then fails."""
    with session_scope(factory) as session:
        _lock(session, key)
        incident = _open_incident(session, key)
        if incident is None:
            incident = AlertIncident(key=key, severity=severity, summary=summary, opened_at=now, last_seen_at=now)
            session.add(incident)
            _log_alert(incident)
        else:
            incident.severity, incident.summary, incident.last_seen_at = severity, summary, now
        if incident.notified_at is None and deliver(webhook_url, alert_message(incident)):
            incident.notified_at = now
            if sent is not None:
                sent.append(True)
        return incident


def clear_incident(factory: sessionmaker, key: str, now: datetime | None = None,
                   *, webhook_url: str | None = None) -> AlertIncident | None:
    """Close the open incident of `key` with one recovery message; nothing open, nothing done."""
    try:
        return _clear_recorded(factory, key, now, webhook_url)
    except SQLAlchemyError as error:
        log.warning("incident store unavailable (%s): %s not cleared", type(error).__name__, key)
        return None


def _clear_recorded(factory, key, now, webhook_url, notify: bool = True) -> AlertIncident | None:
    """Close the open incident of `key`, with its recovery message unless `notify` is false."""
    if not _is_open(factory, key):  # the common case, without taking the lock
        return None
    with session_scope(factory) as session:
        _lock(session, key)
        incident = _open_incident(session, key)
        if incident is None:
            return None
        incident.closed_at = now or utcnow()
        if notify:
            log.info("RECOVERED %s after %s: %s", _log_text(key), _duration(incident), _log_text(incident.summary))
            if deliver(webhook_url, recovery_message(incident)):
                incident.recovery_notified_at = incident.closed_at
        return incident


class ProcessIncidents:
    """The incidents one process's own watch raises and clears (the disk watch of a worker or beat).

    Each is recorded in the incident store when the store answers, so the processes sharing it
    (every worker, every beat) send one alert and one recovery between them. It is also kept in
    this process's memory, so that when the store cannot be written (the database is on the full
    volume, say) this process still alerts once, not at every check, and still sends the recovery.
    Then every watching process sends its own pair, and says so in the message.
    """

    def __init__(self, factory: sessionmaker, webhook_url: str | None):
        self.factory, self.webhook_url = factory, webhook_url
        self.open: dict[str, _HeldIncident] = {}
        self._recovered_unrecorded: set[str] = set()  # recovery sent, the store's row still open

    def raise_(self, key: str, severity: str, summary: str, now: datetime | None = None) -> None:
        """Open `key` once; while it is open, only an opening alert not yet accepted is sent again."""
        now = now or utcnow()
        summary = summary[:SUMMARY_CHARS]
        held = self.open.get(key)
        if held is not None:
            if not held.notified:
                held.notified = self._alert(held, severity, summary, now)
            return
        self._recovered_unrecorded.discard(key)
        sent: list[bool] = []
        try:
            incident = _raise_recorded(self.factory, key, severity, summary, now, self.webhook_url, sent)
        except SQLAlchemyError as error:
            log.error("incident store unavailable (%s): %s kept by this process only", type(error).__name__, key)
            incident = AlertIncident(key=key, severity=severity, summary=summary, opened_at=now, last_seen_at=now)
            _log_alert(incident)
            held = _HeldIncident(incident, recorded=False, notified=bool(sent))
            if not held.notified:
                held.notified = deliver(self.webhook_url, alert_message(incident, note=PROCESS_ONLY_NOTE))
        else:
            held = _HeldIncident(incident, recorded=True, notified=incident.notified_at is not None)
        self.open[key] = held

    def _alert(self, held: "_HeldIncident", severity: str, summary: str, now: datetime) -> bool:
        if not self.webhook_url:
            return False
        if held.recorded:
            try:
                return _raise_recorded(self.factory, held.incident.key, severity, summary, now,
                                       self.webhook_url).notified_at is not None
            except SQLAlchemyError:
                pass
        return deliver(self.webhook_url, alert_message(held.incident, note=PROCESS_ONLY_NOTE))

    def clear(self, key: str, now: datetime | None = None) -> None:
        """Close `key` with one recovery message, whoever opened it; a no-op (one read) when nothing is open."""
        now = now or utcnow()
        held = self.open.get(key)
        try:
            closed = _clear_recorded(self.factory, key, now, self.webhook_url,
                                     notify=key not in self._recovered_unrecorded)
        except SQLAlchemyError as error:
            if held is None:
                return  # nothing this process opened; the store is asked again at the next check
            log.warning("incident store unavailable (%s): %s recovered, told by this process only",
                        type(error).__name__, key)
            self._recover_here(held, now)
            if held.recorded:  # its row stays open: closed without a second message once the store answers
                self._recovered_unrecorded.add(key)
            return
        self._recovered_unrecorded.discard(key)
        self.open.pop(key, None)
        if closed is None and held is not None and not held.recorded:
            self._recover_here(held, now)  # only ever in this process's memory: its recovery is ours to send

    def _recover_here(self, held: "_HeldIncident", now: datetime) -> None:
        self.open.pop(held.incident.key, None)
        incident = held.incident
        incident.closed_at = now
        log.info("RECOVERED %s after %s: %s", _log_text(incident.key), _duration(incident),
                 _log_text(incident.summary))
        deliver(self.webhook_url, recovery_message(incident))


@dataclass
class _HeldIncident:
    incident: AlertIncident
    recorded: bool  # in the incident store (else in this process's memory only)
    notified: bool  # the opening alert was accepted


def _lock(session: Session, key: str) -> None:
    """Serialise everyone raising or clearing `key` until this transaction ends, so one incident opens."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _lock_id(key)})
    else:
        # SQLite takes its single write lock at a transaction's first write, even one matching no row;
        # a second writer waits for it (busy timeout) before it can read anything.
        session.execute(update(AlertIncident).where(AlertIncident.id.is_(None)).values(key=AlertIncident.key))


def _lock_id(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"alert:{key}".encode(), digest_size=8).digest(), "big", signed=True)


def _open_incident(session: Session, key: str) -> AlertIncident | None:
    return session.scalar(select(AlertIncident)
                          .where(AlertIncident.key == key, AlertIncident.closed_at.is_(None))
                          .order_by(AlertIncident.id).limit(1))


def _is_open(factory: sessionmaker, key: str) -> bool:
    with session_scope(factory) as session:
        return _open_incident(session, key) is not None


def open_keys(factory: sessionmaker, prefix: str) -> set[str]:
    """The keys starting with `prefix` that have an open incident."""
    with session_scope(factory) as session:
        return set(session.scalars(select(AlertIncident.key)
                                   .where(AlertIncident.key.startswith(prefix, autoescape=True),
                                          AlertIncident.closed_at.is_(None))))


def _log_alert(incident: AlertIncident) -> None:
    level = logging.ERROR if incident.severity == CRITICAL else logging.WARNING
    log.log(level, "ALERT %s %s: %s", incident.severity, _log_text(incident.key), _log_text(incident.summary))


def _log_text(value: str) -> str:
    """`value` on one line: text from data never forges a log line of its own."""
    return " ".join(value.splitlines())


# Messages


def _shanghai(moment: datetime) -> str:
    return moment.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")


def _duration(incident: AlertIncident) -> str:
    minutes = int((incident.closed_at - incident.opened_at).total_seconds() // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


PROCESS_ONLY_NOTE = ("数据库不可用：本进程只告警一次，其他进程可能各发一次 / incident store unavailable: "
                     "this process alerts once, other processes may alert once each")


# Markdown from data. Neither robot honours CommonMark's backslash escapes (WeCom shows `\[` as is, or
# takes `\[...\]` for a formula), so each character that opens markup (links and images, emphasis,
# code, HTML such as <font>, <@user> mentions, formulas) is replaced by its full-width twin, which
# reads the same and is markup to no renderer. A line break would start a heading, list or quote.
# `_` stays: neither robot documents `_emphasis_`, and snake_case names must stay copyable.
MARKUP_CHARACTERS = "\\`*~[]<>@$&"
FULL_WIDTH = str.maketrans({c: chr(ord(c) + 0xFEE0) for c in MARKUP_CHARACTERS})
LINE_BREAKS = re.compile(r"[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+")
LINE_BREAK_MARK = " ⏎ "
URL_SCHEME = re.compile(r"(?<=[A-Za-z0-9])://")  # a bare http://… would be linked by the clients


def plain_text(value: str) -> str:
    """`value` (a reference, a name, an error text) shown as itself in a robot's markdown, on one line."""
    one_line = LINE_BREAKS.sub(LINE_BREAK_MARK, str(value)).translate(FULL_WIDTH)
    return URL_SCHEME.sub("\uff1a//", one_line)


def alert_message(incident: AlertIncident, unrecorded: bool = False, note: str | None = None) -> Message:
    """The opening alert: severity, key, summary, since when (Asia/Shanghai), which host."""
    title = f"【告警 ALERT】{plain_text(incident.key)}"
    lines = [
        f"### {title}",
        f"**级别 Severity**: {plain_text(SEVERITY_WORDS.get(incident.severity, incident.severity))}",
        f"**事件 Key**: {plain_text(incident.key)}",
        f"**摘要 Summary**: {plain_text(incident.summary)[:SUMMARY_CHARS]}",
        f"**时间 Time**: {_shanghai(incident.opened_at)} (Asia/Shanghai)",
        f"**主机 Host**: {plain_text(socket.gethostname())}",
    ]
    if unrecorded:
        lines.append("**注意 Note**: 数据库不可用，每次检查都会重复告警 / "
                     "incident store unavailable: repeated every check")
    if note:
        lines.append(f"**注意 Note**: {note}")
    return Message(title, "\n\n".join(lines))


def recovery_message(incident: AlertIncident) -> Message:
    """The recovery: key, what it was, how long it lasted, when it cleared (Asia/Shanghai), which host."""
    title = f"【告警恢复 RESOLVED】{plain_text(incident.key)}"
    lines = [
        f"### {title}",
        f"**事件 Key**: {plain_text(incident.key)}",
        f"**原告警 Was**: {plain_text(incident.summary)[:SUMMARY_CHARS]}",
        f"**持续 Lasted**: {_duration(incident)} (since {_shanghai(incident.opened_at)})",
        f"**恢复时间 Cleared**: {_shanghai(incident.closed_at)} (Asia/Shanghai)",
        f"**主机 Host**: {plain_text(socket.gethostname())}",
    ]
    return Message(title, "\n\n".join(lines))


# Delivery to the group robot


def is_dingtalk(url: str) -> bool:
    """DingTalk's hosts, or its robot path behind a relay; anything else is taken for WeCom."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return host == "dingtalk.com" or host.endswith(".dingtalk.com") or parts.path.rstrip("/") == DINGTALK_PATH


def robot_body(url: str, message: Message) -> dict:
    """The markdown message in the format of the robot behind `url`."""
    if is_dingtalk(url):
        return {"msgtype": "markdown", "markdown": {"title": message.title, "text": message.text}}
    return {"msgtype": "markdown", "markdown": {"content": message.text}}


def _where(url: str) -> str:
    """The URL without its query (the robot's key or access token) or any credentials."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def _scrubbed(words: str, url: str) -> str:
    """`words` with every query value of `url` (the key, the token) masked."""
    for _, value in parse_qsl(urlsplit(url).query):
        words = words.replace(value, "***")
    return words


def deliver(url: str | None, message: Message) -> bool:
    """POST `message` to the robot; True only when it answered errcode 0. No URL: nothing sent."""
    if not url:
        return False
    try:
        response = httpx.post(url, json=robot_body(url, message), timeout=WEBHOOK_TIMEOUT)
    except (httpx.HTTPError, httpx.InvalidURL) as error:
        log.error("alert not delivered to %s: %s: %s", _where(url), type(error).__name__, _scrubbed(str(error), url))
        return False
    if response.status_code >= 400:
        log.error("alert not delivered to %s: HTTP %d", _where(url), response.status_code)
        return False
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or answer.get("errcode") != 0:
        log.error("alert not delivered to %s: robot answered %.200s", _where(url), _scrubbed(response.text, url))
        return False
    return True


# What the checks raise


def alert_health(factory: sessionmaker, report: HealthReport, webhook_url: str | None,
                 now: datetime | None = None) -> None:
    """Each failing component of the health report raises `health:<name>`; each passing one clears it."""
    for check in report.checks:
        key = f"health:{check.name}"
        if check.status == OK:
            clear_incident(factory, key, now, webhook_url=webhook_url)
        else:
            raise_incident(factory, key, SEVERITY_OF_STATUS[check.status], _describe(check), now,
                           webhook_url=webhook_url)


def _describe(check: Check) -> str:
    if "error" in check.detail:
        return f"{check.name} {check.status}: {check.detail['error']}"
    if "volumes" in check.detail:
        return "; ".join(_volume_words(v) for v in check.detail["volumes"])
    return f"{check.name} {check.status}: " + ", ".join(f"{k}={v}" for k, v in check.detail.items())


def _volume_words(volume: dict) -> str:
    return (f"disk {volume['status']}: {volume['percent']}% used, {volume['free_bytes'] // 2**20} MiB free "
            f"({', '.join(volume['paths'])})")


def alert_disk(factory: sessionmaker, volumes: list[VolumeUsage], webhook_url: str | None,
               now: datetime | None = None) -> None:
    """Each volume past a threshold raises `disk:<first path on it>`; one back under it clears that."""
    for volume in volumes:
        key = f"disk:{volume.paths[0]}"
        if volume.status == OK:
            clear_incident(factory, key, now, webhook_url=webhook_url)
        else:
            raise_incident(factory, key, SEVERITY_OF_STATUS[volume.status], _volume_words(volume.as_dict()), now,
                           webhook_url=webhook_url)


def alert_timeouts(factory: sessionmaker, count: int, references: list[str], webhook_url: str | None,
                   now: datetime | None = None) -> None:
    """Deliveries timed out by this run raise `deliveries:timeout`; a run timing out none clears it."""
    if not count:
        clear_incident(factory, "deliveries:timeout", now, webhook_url=webhook_url)
        return
    more = " …" if count > len(references) else ""
    summary = (f"{count} 件投递超过期限未签收 / deliveries passed their deadline undelivered: "
               f"{', '.join(references)}{more}")
    raise_incident(factory, "deliveries:timeout", WARNING, summary, now, webhook_url=webhook_url)


def overdue_references(session: Session, today: date, limit: int) -> list[str]:
    """A few references of the deliveries that `mark_overdue_deliveries(session, today)` times out."""
    return list(session.scalars(select(Delivery.reference)
                                .where(Delivery.status.in_(ACTIVE_STATUSES), Delivery.deadline.is_not(None),
                                       Delivery.deadline < today)
                                .order_by(Delivery.deadline, Delivery.id).limit(limit)))


def alert_job_outcome(factory: sessionmaker, job: str, outcome: str, result, webhook_url: str | None,
                      now: datetime | None = None) -> None:
    """A periodic job's final failure raises `job:<name>`; its next success clears it."""
    key = f"job:{job}"
    if outcome == "success":
        clear_incident(factory, key, now, webhook_url=webhook_url)
        return
    error = f"{type(result).__name__}: {result}" if isinstance(result, BaseException) else str(result)
    raise_incident(factory, key, CRITICAL, f"{job} 执行失败 / final run ended {outcome}: {error}", now,
                   webhook_url=webhook_url)


def alert_lost_runs(factory: sessionmaker, jobs: list[str], webhook_url: str | None,
                    now: datetime | None = None) -> None:
    """A periodic run that never finished (killed at its hard time limit) is its job's final failure."""
    for job in sorted(set(jobs)):
        alert_job_outcome(factory, job, "lost", "the run never finished (killed at the hard time limit?)",
                          webhook_url, now)
