"""Terminal tables stay aligned with colour codes in them."""

from app.manager.output import human_bytes, human_duration, table


def test_columns_align_whatever_the_colour_codes():
    rendered = table(["service", "state", "pid"], [["beat", "\033[32mrunning\033[0m", "12"], ["worker", "stopped", "-"]])
    lines = [line.replace("\033[32m", "").replace("\033[0m", "") for line in rendered.splitlines()]
    assert lines == ["service  state    pid", "beat     running  12", "worker   stopped  -"]


def test_table_without_headers():
    assert table(None, [["a", "1"], ["bbb", "2"]]) == "a    1\nbbb  2"


def test_human_units():
    assert human_duration(3725) == "1h 2m"
    assert human_duration(0) == "0s"
    assert human_bytes(512) == "512 B"
    assert human_bytes(5 * 1024 * 1024) == "5.0 MB"
