"""The suite's own set-up: tests that share a costly scenario run on one test process.

pytest.ini distributes with `--dist loadgroup`; pytest 9.2 with pytest-xdist 3.8 silently stops
grouping (pytest-dev/pytest-xdist#1386), and each backend's beat scenario then ran on both
processes. requirements-test.txt pins pytest below that; this test fails when the grouping is lost.
"""

import subprocess
import sys

GROUPED = '''
import os
import pytest


@pytest.fixture(scope="module", params=[pytest.param(name, marks=pytest.mark.xdist_group(name)) for name in "ab"])
def scenario(request):
    return request.param


@pytest.mark.parametrize("number", range(4))
def test_probe(scenario, number):
    print(f"ran {scenario} on {os.environ['PYTEST_XDIST_WORKER']}")
'''


def test_tests_of_one_xdist_group_run_on_one_process(tmp_path):
    (tmp_path / "test_grouped.py").write_text(GROUPED)
    result = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-rA", "-q",
                             "-p", "no:cacheprovider", "-c", "/dev/null", str(tmp_path)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    ran: dict[str, set[str]] = {}
    for line in result.stdout.splitlines():
        if line.startswith("ran "):
            _, scenario, _, worker = line.split()
            ran.setdefault(scenario, set()).add(worker)
    assert ran.keys() == {"a", "b"} and all(len(workers) == 1 for workers in ran.values()), ran
