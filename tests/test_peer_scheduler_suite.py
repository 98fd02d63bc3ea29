"""django-celery-beat's own scheduler tests, run against our scheduler and entry classes.

The sdist of django-celery-beat (the version we pin) is downloaded from the package index at test
time and unpacked in a temporary folder, without its `django_celery_beat/` package (the installed
one is under test). A child pytest runs its `t/unit/test_schedulers.py` with tests/peer/plugin.py,
which substitutes `ScheduleTableScheduler` / `RunRecordingEntry` for `DatabaseScheduler` /
`ModelEntry`. The peer suite needs pytest < 9 and pytest-django: the child runs in a small venv of
its own (cached in .venv-peer/, keyed by its requirements) that also sees this venv's packages.
The tests in REAL_TIME_TESTS wait for real minutes to pass: a second child runs them at the same
time, on a wall clock that runs faster (libfaketime).

Every peer test must pass against ours, except those in DELIBERATE_DIVERGENCES (each of which must
fail, so the list stays honest); those in STOCK_FAILURES fail against stock too and are not run.
PEER_SCHEDULER=stock runs the same suite, same environment, against stock django-celery-beat: there
exactly STOCK_FAILURES must fail, which tells the environment's failures from our classes'.
"""

import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.test_beat_stalls import LIBFAKETIME, SLEEP_WORKAROUND

REPO = Path(__file__).resolve().parents[1]
PEER_PACKAGE = "django-celery-beat"
PEER_VERSION = "2.9.0"
PEER_TESTS = "t/unit/test_schedulers.py"
PEER_MODULE = "t.unit.test_schedulers"
# requirements/test.txt of the sdist: pytest<9 and pytest-django<5; ephem and pytest-timeout come
# from our own venv (requirements.txt and requirements-test.txt).
PEER_REQUIREMENTS = ("pytest==8.4.2", "pytest-django==4.11.1")
PEER_VENV_ROOT = REPO / ".venv-peer"
CHILD_TIMEOUT = 600

# Peer tests that fail against our classes by design ("Class::test": why we differ on purpose).
# Each must fail: one that passes must be removed from here.
DELIBERATE_DIVERGENCES: dict[str, str] = {
    "test_DatabaseSchedulerFromAppConf::test_periodic_task_model_enabled_schedule":
        "code-defined jobs come from beat_schedules.py (the `table`), not app.conf.beat_schedule; "
        "no celery.backend_cleanup entry (cleanup-expired-results does its work)",
    "test_DatabaseSchedulerFromAppConf::test_periodic_task_model_disabled_schedule":
        "no celery.backend_cleanup entry: the schedule is empty where stock has only that one",
    "test_DatabaseSchedulerFromAppConf::test_periodic_task_model_schedule_type_change":
        "app.conf.beat_schedule is not written to the table (beat_schedules.py is, by sync_schedule_table)",
    "test_DatabaseScheduler::test_all_as_schedule":
        "no celery.backend_cleanup entry",
    "test_DatabaseScheduler::test_starttime_trigger":
        "no celery.backend_cleanup entry: the heap holds one entry fewer than the test counts",
    "test_DatabaseScheduler::test_reserve":
        "reserve() marks nothing dirty for sync(): a job's last run is written only with its run's record "
        "(compare-and-set), or not at all",
    "test_DatabaseScheduler::test_sync_syncs_before_save":
        "the reserved last run (the due slot) is not saved by sync(); only the run's record writes it, "
        "and this test records no run",
}

# Peer tests that fail against stock django-celery-beat itself, in this environment as in a plain
# run of its suite: not about our classes, so not run against them. Each must fail on stock.
STOCK_FAILURES: dict[str, str] = {
    "test_DatabaseScheduler::test_heap_always_return_the_first_item":
        "asserts that a disabled entry at the head of the heap starves the others, which 2.9.0 fixed",
}

# Peer tests that wait for real minutes to pass. They run in a child pytest of their own, beside the
# others, whose wall clock runs CLOCK_SPEED times as fast (libfaketime; the child's sleeps and timeouts
# shrink with it, its broker keeps the real clock); without libfaketime, with the others.
REAL_TIME_TESTS: dict[str, str] = {
    "test_DatabaseScheduler::test_crontab_with_start_time_tick":
        "ticks until a crontab job two minutes ahead falls due (its loop never counts its iterations): "
        "one to two minutes of real time",
}
# 4, not 10: at 10 a 0.3 s stall of the child under CI load is a whole period of the test's 3-second
# job, and the crontab job reached the head of the heap before it was due (failed once in CI).
CLOCK_SPEED = 4

NETWORK_ERRORS = re.compile(
    r"NewConnectionError|Max retries exceeded|Temporary failure in name resolution|Name or service not known"
    r"|Network is unreachable|Connection refused|ConnectTimeoutError|ReadTimeoutError|Could not fetch URL"
    r"|No route to host|ProxyError|SSLError", re.I)


def _pip(args: list[str], what: str) -> None:
    """Run pip; skip when the package index cannot be reached, fail on any other error."""
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "--retries", "1",
               "--timeout", "20", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode == 0:
        return
    output = result.stdout + result.stderr
    network = NETWORK_ERRORS.search(output)
    if network:
        pytest.skip(f"package index not reachable ({network.group(0)}): cannot {what}")
    pytest.fail(f"pip could not {what} (exit {result.returncode}):\n{output[-4000:]}")


@pytest.fixture(scope="session")
def peer_sdist(tmp_path_factory) -> Path:
    """The unpacked sdist (tests, requirements, setup.cfg; not its package), once per session."""
    download = tmp_path_factory.mktemp("peer-sdist")
    _pip(["download", "--no-binary", ":all:", "--no-deps", f"{PEER_PACKAGE}=={PEER_VERSION}",
          "-d", str(download)], f"download the {PEER_PACKAGE} {PEER_VERSION} sdist")
    [archive] = download.glob("*.tar.gz")
    root_name = f"{PEER_PACKAGE.replace('-', '_')}-{PEER_VERSION}"
    with tarfile.open(archive) as tar:
        members = [member for member in tar.getmembers()
                   if not member.name.startswith(f"{root_name}/django_celery_beat/")]
        tar.extractall(download, members=members, filter="data")
    root = download / root_name
    assert (root / PEER_TESTS).is_file(), f"{PEER_TESTS} not in the sdist"
    return root


def _peer_venv_key() -> str:
    text = "\n".join([*PEER_REQUIREMENTS, sys.version, sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@pytest.fixture(scope="session")
def peer_python() -> Path:
    """The peer venv's interpreter: same Python as ours, PEER_REQUIREMENTS, then our site-packages."""
    PEER_VENV_ROOT.mkdir(exist_ok=True)
    venv = PEER_VENV_ROOT / _peer_venv_key()
    python, stamp = venv / "bin" / "python", venv / ".complete"
    with (PEER_VENV_ROOT / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs on one tree build it once
        if stamp.exists():
            return python
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
        _pip(["--python", str(python), "install", "--quiet", *PEER_REQUIREMENTS],
             f"install {' '.join(PEER_REQUIREMENTS)} into {venv}")
        # After the install, so pip never sees (nor touches) our venv's packages: they come after its own.
        site_packages = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                            capture_output=True, text=True, check=True).stdout.strip())
        ours = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
        (site_packages / "zz_main_venv.pth").write_text("".join(f"{path}\n" for path in ours))
        check = subprocess.run([str(python), "-c", "import pytest, pytest_django, django_celery_beat, ephem; "
                                "print(pytest.__version__)"], capture_output=True, text=True)
        assert check.returncode == 0 and check.stdout.startswith("8."), check.stdout + check.stderr
        stamp.touch()
    return python


def _child_env(var_dir: Path, sdist: Path, subject: str, fast_clock: bool) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PYTEST_", "CELERY_", "DJANGO_", "TOX_", "FAKETIME"))
           and key not in ("DATABASE_URL", "APP_HOME", "PYTHONPATH", "COV_CORE_SOURCE", "LD_PRELOAD")}
    paths = [str(sdist), str(REPO)]
    if fast_clock:
        site = var_dir / "faketime-site"
        site.mkdir(parents=True)
        (site / "sitecustomize.py").write_text(SLEEP_WORKAROUND)
        paths.insert(0, str(site))
        env.update(LD_PRELOAD=str(LIBFAKETIME), FAKETIME=f"+0 x{CLOCK_SPEED}", FAKETIME_DONT_FAKE_MONOTONIC="1")
    env.update(
        PYTHONPATH=os.pathsep.join(paths),
        PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",  # our venv's pytest-xdist stays out; plugins named with -p
        PEER_SCHEDULER=subject,
        VAR_DIR=str(var_dir / "var"),
        LOGS_DIR=str(var_dir / "logs"),
        APP_ENV_FILE="",
        DJANGO_SETTINGS_MODULE="tests.peer.settings",
        TRACKING_PROVIDER="simulator",
    )
    return env


def _kill_leftover_broker(var_dir: Path) -> None:
    """The child's embedded broker, should the child have died before stopping it."""
    info_file = var_dir / "var" / "peer-broker.json"
    if not info_file.exists():
        return
    info = json.loads(info_file.read_text())
    try:
        pid = int(Path(info["pidfile"]).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError):
        return
    if info["socket"] in cmdline:
        os.kill(pid, signal.SIGKILL)


def _outcomes(junit: Path) -> dict[str, tuple[str, str]]:
    """{"Class::test": (outcome, first line of the failure)} from a JUnit XML report."""
    outcomes: dict[str, tuple[str, str]] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        classname = case.get("classname", "").removeprefix(PEER_MODULE).lstrip(".")
        test_id = f"{classname}::{case.get('name')}" if classname else case.get("name")
        outcome, message = "passed", ""
        for tag, name in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            element = case.find(tag)
            if element is not None:
                text = (element.get("message") or element.text or "").strip()
                outcome, message = name, (text.splitlines() or [""])[0][:200]
                break
        previous = outcomes.get(test_id)
        if previous is None or previous[0] == "passed":  # a teardown error is a second <testcase>
            outcomes[test_id] = (outcome, message)
    return outcomes


class PeerChild:
    """A child pytest over some of the peer tests, started at once: its output in a file, its
    report in JUnit XML, its VAR_DIR (SQLite file, embedded broker) its own."""

    def __init__(self, peer_python: Path, sdist: Path, directory: Path, subject: str, tests: list[str],
                 deselect: list[str], fast_clock: bool = False):
        directory.mkdir()
        self.directory, self.junit, self.output = directory, directory / "peer-junit.xml", directory / "peer-output.txt"
        command = [str(peer_python), "-m", "pytest", *tests, "-c", "setup.cfg", "--rootdir", ".",
                   "-p", "pytest_django.plugin", "-p", "pytest_timeout", "-p", "tests.peer.plugin",
                   "-p", "no:cacheprovider", "--ds=tests.peer.settings", "--timeout=120",
                   f"--junitxml={self.junit}", "-q", "-rfE", "--tb=short", "-o", "addopts="]
        command += [arg for test in deselect for arg in ("--deselect", f"{PEER_TESTS}::{test}")]
        with self.output.open("w") as output:
            self.process = subprocess.Popen(command, cwd=sdist, env=_child_env(directory, sdist, subject, fast_clock),
                                            stdout=output, stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def outcomes(self, deadline: float) -> dict[str, tuple[str, str]]:
        """Its outcomes once it has finished; a failure when it is still running at `deadline` (monotonic)."""
        try:
            self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the peer suite did not finish within {CHILD_TIMEOUT} s:\n{self.text()[-6000:]}")
        assert self.junit.exists(), f"the peer suite wrote no report (exit {self.process.returncode}):\n" \
                                    f"{self.text()[-6000:]}"
        return _outcomes(self.junit)

    def kill(self) -> None:
        """Its process group, if still running, and its embedded broker, should it have outlived the child."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        _kill_leftover_broker(self.directory)


def peer_children(peer_python: Path, sdist: Path, directory: Path, subject: str) -> list[PeerChild]:
    """The child pytests of one run of the peer suite: the tests that wait for real minutes, on a fast
    clock, beside the others (all in one child where libfaketime is missing)."""
    deselect = list(STOCK_FAILURES) if subject == "ours" else []
    if not LIBFAKETIME.exists():
        return [PeerChild(peer_python, sdist, directory / "all", subject, [PEER_TESTS], deselect)]
    real_time = [f"{PEER_TESTS}::{test}" for test in REAL_TIME_TESTS]
    return [PeerChild(peer_python, sdist, directory / "real-time", subject, real_time, [], fast_clock=True),
            PeerChild(peer_python, sdist, directory / "others", subject, [PEER_TESTS],
                      deselect + list(REAL_TIME_TESTS))]


@pytest.mark.xdist_group("peer-suite")
@pytest.mark.timeout(900)
def test_peer_scheduler_suite(peer_sdist, peer_python, tmp_path, record_property):
    subject = os.environ.get("PEER_SCHEDULER", "ours")
    started = time.monotonic()
    children = peer_children(peer_python, peer_sdist, tmp_path, subject)
    try:
        outcomes = {test: result for child in children
                    for test, result in child.outcomes(started + CHILD_TIMEOUT).items()}
    finally:
        for child in children:
            child.kill()
    elapsed = time.monotonic() - started
    output = "\n".join(child.text() for child in children)

    must_fail = DELIBERATE_DIVERGENCES if subject == "ours" else STOCK_FAILURES
    not_run = STOCK_FAILURES if subject == "ours" else {}
    failing = {test: result for test, result in outcomes.items() if result[0] != "passed"}
    unexpected = sorted(test for test in failing if test not in must_fail)
    now_passing = sorted(test for test in must_fail if outcomes.get(test, ("absent",))[0] == "passed")
    absent = sorted(test for test in [*must_fail, *REAL_TIME_TESTS] if test not in outcomes)

    def label(test: str) -> str:
        return ("deliberate" if test in DELIBERATE_DIVERGENCES and subject == "ours"
                else "fails on stock too" if test in STOCK_FAILURES else "UNEXPECTED")

    lines = [f"peer suite ({PEER_PACKAGE} {PEER_VERSION} {PEER_TESTS}) against {subject}: "
             f"{len(outcomes) - len(failing)}/{len(outcomes)} passed in {elapsed:.1f} s"]
    lines += [f"  {label(test)} {outcome}: {test}: {message}" for test, (outcome, message) in sorted(failing.items())]
    lines += [f"  not run (fails on stock too): {test}" for test in not_run]
    lines += [f"  NOW PASSING (remove from the list): {test}" for test in now_passing]
    summary = "\n".join(lines)
    print(summary)
    record_property("peer_suite_summary", summary)

    assert len(outcomes) + len(not_run) >= 60, f"only {len(outcomes)} peer tests ran:\n{output[-6000:]}"
    assert not absent, f"listed tests that the peer suite no longer has: {absent}"
    assert not now_passing, f"{summary}\n\nlisted failures that pass now; remove them from the list: {now_passing}"
    assert not unexpected, f"{summary}\n\nchild output (tail):\n{output[-8000:]}"


def test_every_deliberate_divergence_is_documented():
    documented = (REPO / "CELERY_BEAT_CONFIG.md").read_text(encoding="utf-8")
    assert [test for test in DELIBERATE_DIVERGENCES if f"`{test}`" not in documented] == []
