"""Terminal tables stay aligned in display cells, whatever the colour codes and Chinese text in them."""

from app.cli.output import display_width, human_bytes, human_duration, human_time, table, truncate


def test_columns_align_whatever_the_colour_codes():
    rendered = table(["service", "state", "pid"], [["beat", "\033[32mrunning\033[0m", "12"], ["worker", "stopped", "-"]])
    lines = [line.replace("\033[32m", "").replace("\033[0m", "") for line in rendered.splitlines()]
    assert lines == ["service  state    pid", "beat     running  12", "worker   stopped  -"]


def test_chinese_cells_take_two_columns_each_and_the_next_column_starts_at_one_cell():
    rendered = table(["name", "city", "n"], [["张三", "北京", "1"], ["Li Lei", "Beijing", "2"]]).splitlines()
    assert [display_width(line[:line.index(n)]) for line, n in zip(rendered[1:], "12")] == [17, 17]
    assert display_width("张三") == 4 and display_width("\033[31m北京\033[0m") == 4


def test_a_capped_column_cuts_in_display_cells():
    assert truncate("北京市朝阳区建国路1号", 9) == "北京市朝…"
    assert display_width(truncate("北京市朝阳区建国路1号", 9)) <= 9


def test_table_without_headers():
    assert table(None, [["a", "1"], ["bbb", "2"]]) == "a    1\nbbb  2"


def test_human_units_and_times():
    assert human_duration(3725) == "1h 2m"
    assert human_duration(0) == "0s"
    assert human_bytes(512) == "512 B"
    assert human_bytes(5 * 1024 * 1024) == "5.0 MB"
    assert human_time("2026-12-01T16:00:00+00:00") == "2026-12-02 00:00:00+08:00"
    assert human_time(None) == "-"
