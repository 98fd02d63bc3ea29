"""Disk usage against thresholds, measured on the real volumes."""

import psutil

from app.services.disk import CRITICAL, OK, WARN, check_disk_space, level, worst


def test_level_thresholds():
    assert level(79.9, 80, 90) == OK
    assert level(80, 80, 90) == WARN
    assert level(95, 80, 90) == CRITICAL


def test_one_entry_per_volume_with_real_usage(tmp_path):
    (tmp_path / "a").mkdir()
    volumes = check_disk_space([tmp_path / "a", tmp_path / "not-created-yet"], 80, 90)
    assert len(volumes) == 1
    usage = psutil.disk_usage(str(tmp_path))
    assert volumes[0].total_bytes == usage.total
    assert abs(volumes[0].percent - usage.percent) < 1
    assert volumes[0].paths == sorted({str(tmp_path / "a"), str(tmp_path)})


def test_thresholds_decide_the_status(tmp_path):
    percent = psutil.disk_usage(str(tmp_path)).percent
    assert check_disk_space([tmp_path], percent + 1, percent + 2)[0].status == OK
    assert check_disk_space([tmp_path], max(percent - 1, 0.01), 100)[0].status in (WARN, CRITICAL)
    assert check_disk_space([tmp_path], 0.01, 0.02)[0].status == CRITICAL


def test_worst_status():
    assert worst([OK, WARN, OK]) == WARN
    assert worst([OK, CRITICAL, WARN]) == CRITICAL
    assert worst([]) == OK
