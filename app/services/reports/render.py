"""A report as a self-contained HTML page (inline SVG charts, no script, no network) and as CSV."""

import csv
import io
from datetime import date, datetime, timedelta
from html import escape
from math import ceil, floor, log10
from zoneinfo import ZoneInfo

from app.core.config import TIMEZONE

KIND_TITLES = {"daily": ("日报", "Daily"), "weekly": ("周报", "Weekly"), "monthly": ("月报", "Monthly")}
JOB_KEYS = ("runs", "skipped", "failures", "longest_seconds", "max_lateness_seconds", "mean_lateness_seconds")
CHART_WIDTH, CHART_HEIGHT = 900, 300
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 48, 12, 28, 36
MAX_AXIS_LABELS = 16
GRID_LINES = 4  # above the axis; the chart's top is 4 round steps, so every tick is a round number
STYLE = """
body { font-family: "WenQuanYi Micro Hei", "Noto Sans CJK SC", "PingFang SC", "Microsoft YaHei", sans-serif;
       margin: 2rem auto; max-width: 960px; color: #1f2933; padding: 0 1rem; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #d9e2ec; padding-bottom: .3rem; }
.period { color: #52606d; margin-top: 0; }
.cards { display: grid; grid-template-columns: repeat(4, 1fr); gap: .8rem; }
.card { background: #f0f4f8; border-radius: 6px; padding: .8rem; }
.card .value { font-size: 1.8rem; font-weight: bold; } .card .label { color: #52606d; font-size: .85rem; }
table { border-collapse: collapse; width: 100%; } th, td { padding: .35rem .6rem; border-bottom: 1px solid #e4e7eb; }
th { text-align: left; background: #f0f4f8; } .n { text-align: right; font-variant-numeric: tabular-nums; }
svg { width: 100%; height: auto; } svg text { font-size: 11px; fill: #52606d; }
.created { fill: #4c78a8; } .delivered { fill: #54a24b; } .duration { fill: #f58518; }
.grid { stroke: #e4e7eb; } .axis { stroke: #9aa5b1; }
.basis { color: #7b8794; font-size: .78rem; margin: .3rem 0 0; } .notes li { margin-bottom: .4rem; }
"""
# The basis (口径) of each figure: what is counted and which moment puts it in the period.
CREATED_BASIS = "按登记时间（本系统建档）落入本期 / by registration here (our row created) in the period"
DELIVERED_BASIS = "按签收时间落入本期，不论何时登记 / by signing time in the period, whenever registered"
DURATION_BASIS = ("揽收至签收，按签收时间落入本期，{measured} 件 / collection to signing, by signing time in the "
                  "period, over {measured} deliveries")
NO_COLLECTION_BASIS = ("本期签收但无揽收轨迹，不计入时长 / signed in the period without a collection event; "
                       "not in the times")
SIGNED_BEFORE_COLLECTION_BASIS = ("本期签收但签收早于揽收（承运商数据有误），不计入时长 / signed in the period before "
                                  "its collection (bad carrier data); not in the times")
RECEIPTS_BASIS = ("按回证签发时间落入本期，其中 {earlier} 份的运单签收于本期之前 / by issue time in the period; "
                  "{earlier} of them for deliveries signed before the period")
RECEIPTS_EARLIER_BASIS = ("本期签发、运单签收于本期之前的回证 / receipts issued in the period for deliveries signed "
                          "before it")
IN_TRANSIT_BASIS = "生成报告时的快照，不限本期 / snapshot when the report was generated, whatever the period"
ENDED_BASIS = "按最后更新时间落入本期 / by last update in the period"
CARRIER_MEDIAN_BASIS = "揽收至签收，按签收时间落入本期 / collection to signing, by signing time in the period"
MEASURED_BASIS = "本期签收且有揽收记录、可计时长的件数 / signed in the period with a collection event to time from"
DELIVERIES_BASIS = {"created": CREATED_BASIS, "delivered": DELIVERED_BASIS,
                    "delivered_no_collection_event": NO_COLLECTION_BASIS,
                    "delivered_signed_before_collection": SIGNED_BEFORE_COLLECTION_BASIS,
                    "in_transit": IN_TRANSIT_BASIS, "timed_out": ENDED_BASIS, "failed": ENDED_BASIS}
JOBS_BASIS = ("按应运行时间落入本期（手动运行按开始时间） / by the time a run fell due in the period "
              "(a run sent by hand: its start)")
NOTES = (
    "送达（签收）：承运商签收时间在本期内的运单，不论何时登记；导入已签收的运单时，签收可能早于登记。"
    " Delivered: deliveries the carrier signed for during the period, whenever they were registered here;"
    " a shipment imported after signing was signed before it was registered.",
    "送达回证：本期内签发的回证，不论运单何时签收；本期之前签收、本期才签发回证的有 {earlier} 份，"
    "所以回证数可以大于本期送达数。 Receipts issued: receipts issued during the period, whenever their delivery"
    " was signed; {earlier} of them are for deliveries signed before the period, so receipts can outnumber"
    " deliveries signed.",
    "送达时长：从承运商揽收（最早一条揽收轨迹：状态“揽收”，或“已揽收”“已收寄”等文字）到签收，不是从本系统登记算起。"
    "无揽收记录 {no_collection} 件、签收早于揽收 {before_collection} 件（承运商数据有误），另行计数，不计入中位数、"
    "90 分位和分布。 Time to delivery: from the carrier's collection (the earliest collection event: status 揽收,"
    " or a text such as 已揽收 or 已收寄) to signing, never from registration here. No collection event:"
    " {no_collection}; signed before collection (bad carrier data): {before_collection}; both counted apart,"
    " outside the median, the 90th percentile and the distribution.",
    "新建：本期内在本系统登记的运单。 Created: deliveries registered here during the period.",
)


def render_html(kind: str, period_start: date, period_end: date, generated_at: datetime, numbers: dict) -> str:
    """The report page: summary cards, the two charts, and tables of every number."""
    chinese, english = KIND_TITLES[kind]
    title = f"投递{chinese} {english} delivery report"
    period = f"{period_start.isoformat()} – {(period_end - timedelta(days=1)).isoformat()}"
    generated = generated_at.astimezone(ZoneInfo(TIMEZONE)).strftime("%Y-%m-%d %H:%M")
    sections = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="period">{escape(period)} ({escape(TIMEZONE)}) · 生成于 generated {escape(generated)}</p>',
        _cards(numbers),
        "<h2>口径说明 How the figures are counted</h2>",
        _notes(numbers),
        "<h2>每日投递量 Deliveries per day</h2>",
        _basis(f"新建 created: {CREATED_BASIS}; 送达 delivered: {DELIVERED_BASIS}"),
        _per_day_chart(numbers["per_day"]),
        "<h2>送达时长分布 Time to delivery</h2>",
        _basis(_duration_basis(numbers)),
        _duration_chart(numbers["time_to_delivery_buckets"]),
        "<h2>承运商 Carriers</h2>",
        _basis(f"新建 created: {CREATED_BASIS}; 送达 delivered: {DELIVERED_BASIS}; "
               f"中位数 median: {CARRIER_MEDIAN_BASIS}"),
        _carriers_table(numbers["carriers"]),
        "<h2>定时任务 Periodic jobs</h2>",
        _basis(JOBS_BASIS),
        _jobs_table(numbers["jobs"]),
        "<h2>每日明细 Per day</h2>",
        _basis(f"新建 created: {CREATED_BASIS}; 送达 delivered: {DELIVERED_BASIS}"),
        _per_day_table(numbers["per_day"]),
    ]
    return (f'<!DOCTYPE html>\n<html lang="zh-CN">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{escape(title)} {escape(period)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            + "\n".join(sections) + "\n</body>\n</html>\n")


def render_csv(kind: str, period_start: date, period_end: date, numbers: dict) -> str:
    """The same numbers as `section,key,value,basis` rows, the basis (口径) saying what each one counts."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["section", "key", "value", "basis"])
    writer.writerows([("period", "kind", kind, ""), ("period", "first_day", period_start.isoformat(), ""),
                      ("period", "last_day", (period_end - timedelta(days=1)).isoformat(), "")])
    writer.writerows((section, key, "" if value is None else value, basis)
                     for section, key, value, basis in csv_rows(numbers))
    return buffer.getvalue()


def csv_rows(numbers: dict) -> list[tuple[str, str, object, str]]:
    """Every number of the report, flattened to (section, key, value, basis)."""
    duration = _duration_basis(numbers)
    rows = [("deliveries", key, value, DELIVERIES_BASIS[key]) for key, value in numbers["deliveries"].items()]
    rows += [("time_to_delivery_hours", key, value, duration)
             for key, value in numbers["time_to_delivery_hours"].items()]
    rows += [("time_to_delivery_buckets", b["bucket"], b["count"], duration)
             for b in numbers["time_to_delivery_buckets"]]
    rows += [("receipts", "issued", numbers["receipts_issued"], _receipts_basis(numbers)),
             ("receipts", "issued_signed_earlier", numbers["receipts_issued_signed_earlier"], RECEIPTS_EARLIER_BASIS)]
    carrier_basis = {"created": CREATED_BASIS, "delivered": DELIVERED_BASIS, "measured": MEASURED_BASIS,
                     "median_hours": CARRIER_MEDIAN_BASIS}
    for carrier in numbers["carriers"]:
        rows += [(f"carrier:{carrier['carrier']}", key, carrier[key], basis) for key, basis in carrier_basis.items()]
    for job in numbers["jobs"]:
        rows += [(f"job:{job['name']}", key, job[key], JOBS_BASIS) for key in JOB_KEYS]
    rows += [("created_per_day", day["day"], day["created"], CREATED_BASIS) for day in numbers["per_day"]]
    rows += [("delivered_per_day", day["day"], day["delivered"], DELIVERED_BASIS) for day in numbers["per_day"]]
    return rows


def overview_rows(numbers: dict) -> list[tuple[str, object, str]]:
    """(figure, value, basis) of the report's headline figures, as `reports show` prints them."""
    return [*((key, value, DELIVERIES_BASIS.get(key, "")) for key, value in numbers["deliveries"].items()),
            ("receipts_issued", numbers["receipts_issued"], _receipts_basis(numbers)),
            ("receipts_issued_signed_earlier", numbers["receipts_issued_signed_earlier"], RECEIPTS_EARLIER_BASIS),
            *((f"{key}_hours", value, _duration_basis(numbers))
              for key, value in numbers["time_to_delivery_hours"].items())]


def _duration_basis(numbers: dict) -> str:
    return DURATION_BASIS.format(measured=sum(b["count"] for b in numbers["time_to_delivery_buckets"]))


def _receipts_basis(numbers: dict) -> str:
    return RECEIPTS_BASIS.format(earlier=numbers["receipts_issued_signed_earlier"])


def _basis(text: str) -> str:
    return f'<p class="basis">口径 basis: {escape(text)}</p>'


def _notes(numbers: dict) -> str:
    deliveries = numbers["deliveries"]
    values = {"earlier": numbers["receipts_issued_signed_earlier"],
              "no_collection": deliveries["delivered_no_collection_event"],
              "before_collection": deliveries["delivered_signed_before_collection"]}
    return '<ul class="notes">\n' + "\n".join(f"<li>{escape(note.format(**values))}</li>" for note in NOTES) + "\n</ul>"


def _cards(numbers: dict) -> str:
    """The headline figures, each with the line saying what it counts."""
    deliveries, hours, basis = numbers["deliveries"], numbers["time_to_delivery_hours"], DELIVERIES_BASIS
    duration = _duration_basis(numbers)
    cards = [("新建 Created", deliveries["created"], basis["created"]),
             ("送达 Delivered", deliveries["delivered"], basis["delivered"]),
             ("运输中（生成时）In transit now", deliveries["in_transit"], basis["in_transit"]),
             ("送达回证 Receipts issued", numbers["receipts_issued"], _receipts_basis(numbers)),
             ("超时 Timed out", deliveries["timed_out"], basis["timed_out"]),
             ("失败 Failed", deliveries["failed"], basis["failed"]),
             ("送达时长中位数 Median", _hours(hours["median"]), duration),
             ("送达时长 90% 分位 90th percentile", _hours(hours["p90"]), duration),
             ("无揽收记录 No collection event", deliveries["delivered_no_collection_event"],
              basis["delivered_no_collection_event"]),
             ("签收早于揽收 Signed before collection", deliveries["delivered_signed_before_collection"],
              basis["delivered_signed_before_collection"])]
    return '<div class="cards">\n' + "\n".join(
        f'<div class="card"><div class="value">{escape(str(value))}</div><div class="label">{escape(label)}</div>'
        f'<p class="basis">{escape(text)}</p></div>'
        for label, value, text in cards) + "\n</div>"


def _per_day_chart(per_day: list[dict]) -> str:
    labels = [day["day"][5:] for day in per_day]
    series = [("新建 created", "created", [day["created"] for day in per_day]),
              ("送达 delivered", "delivered", [day["delivered"] for day in per_day])]
    return bar_chart("chart-per-day", "Deliveries created and delivered per day", labels, series)


def _duration_chart(buckets: list[dict]) -> str:
    series = [("送达数 deliveries", "duration", [b["count"] for b in buckets])]
    return bar_chart("chart-time-to-delivery", "Deliveries by time to delivery", [b["bucket"] for b in buckets], series)


def bar_chart(chart_id: str, title: str, labels: list[str], series: list[tuple[str, str, list[int]]]) -> str:
    """An SVG bar chart: one group of bars per label, one bar per series (each `rect.bar` carries data-value)."""
    plot_width = CHART_WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_height = CHART_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    top = GRID_LINES * _nice_ceiling(max((v for _, _, values in series for v in values), default=0) / GRID_LINES)
    group_width = plot_width / max(len(labels), 1)
    bar_width = group_width * 0.8 / len(series)
    parts = [(f'<svg id="{escape(chart_id)}" xmlns="http://www.w3.org/2000/svg" role="img" '
              f'viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" width="{CHART_WIDTH}" height="{CHART_HEIGHT}">'),
             f"<title>{escape(title)}</title>"]
    parts += _y_axis(top, plot_width, plot_height)
    step = ceil(len(labels) / MAX_AXIS_LABELS) or 1
    for i, label in enumerate(labels):
        group_x = MARGIN_LEFT + i * group_width + group_width * 0.1
        for s, (name, css_class, values) in enumerate(series):
            height = plot_height * values[i] / top
            parts.append(f'<rect class="bar {css_class}" data-value="{values[i]}" x="{group_x + s * bar_width:.1f}" '
                         f'y="{MARGIN_TOP + plot_height - height:.1f}" width="{bar_width:.1f}" height="{height:.1f}">'
                         f"<title>{escape(label)} {escape(name)}: {values[i]}</title></rect>")
        if i % step == 0:
            parts.append(f'<text x="{group_x + group_width * 0.4:.1f}" y="{CHART_HEIGHT - MARGIN_BOTTOM + 16}" '
                         f'text-anchor="middle">{escape(label)}</text>')
    parts += _legend(series)
    parts.append("</svg>")
    return "\n".join(parts)


def _y_axis(top: float, plot_width: float, plot_height: float) -> list[str]:
    lines = []
    for line in range(GRID_LINES + 1):
        value = top * line / GRID_LINES
        y = MARGIN_TOP + plot_height - plot_height * line / GRID_LINES
        css = "axis" if line == 0 else "grid"
        lines.append(f'<line class="{css}" x1="{MARGIN_LEFT}" x2="{MARGIN_LEFT + plot_width}" '
                     f'y1="{y:.1f}" y2="{y:.1f}"/>')
        lines.append(f'<text x="{MARGIN_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{value:g}</text>')
    return lines


def _legend(series: list[tuple[str, str, list[int]]]) -> list[str]:
    items = []
    for s, (name, css_class, _) in enumerate(series):
        x = MARGIN_LEFT + s * 160
        items.append(f'<rect class="legend {css_class}" x="{x}" y="6" width="12" height="12"/>'
                     f'<text x="{x + 18}" y="16">{escape(name)}</text>')
    return items


def _nice_ceiling(value: float) -> int:
    """The smallest 1, 2 or 5 times a power of ten at or above `value`, at least 1."""
    if value <= 1:
        return 1
    magnitude = 10 ** floor(log10(value))
    return next(step * magnitude for step in (1, 2, 5, 10) if value <= step * magnitude)


def _carriers_table(carriers: list[dict]) -> str:
    rows = [[c["carrier"], c["created"], c["delivered"], c["measured"], _hours(c["median_hours"])] for c in carriers]
    return _table(["承运商 Carrier", "新建 Created", "送达 Delivered", "计时件数 Timed", "送达时长中位数 Median"], rows)


def _jobs_table(jobs: list[dict]) -> str:
    rows = [[j["name"], j["runs"], j["skipped"], j["failures"], _seconds(j["longest_seconds"]),
             _seconds(j["max_lateness_seconds"]), _seconds(j["mean_lateness_seconds"])] for j in jobs]
    return _table(["任务 Job", "运行次数 Runs", "跳过 Skipped", "失败 Failures", "最长耗时 Longest run",
                   "最大延迟 Max lateness", "平均延迟 Mean lateness"], rows)


def _per_day_table(per_day: list[dict]) -> str:
    rows = [[day["day"], day["created"], day["delivered"]] for day in per_day]
    return _table(["日期 Day", "新建 Created", "送达 Delivered"], rows)


def _table(headers: list[str], rows: list[list]) -> str:
    if not rows:
        return '<p class="empty">无数据 No data</p>'
    numeric = [isinstance(value, (int, float)) for value in rows[0]]
    head = "".join(f'<th class="n">{escape(h)}</th>' if n else f"<th>{escape(h)}</th>"
                   for h, n in zip(headers, numeric))
    body = "\n".join("<tr>" + "".join(_cell(value) for value in row) + "</tr>" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _cell(value) -> str:
    numeric = isinstance(value, (int, float))
    return f'<td class="n">{value}</td>' if numeric else f"<td>{escape(str(value))}</td>"


def _hours(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} h"


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} s"
