"""The deploy files agree with the code: compose file, Dockerfile, .env.example and systemd units."""

import configparser
import importlib
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from celery import Celery

from app.core.config import Settings
from app.manager.processes import FLOWER_APP, service_process
from app.tasks.celery_app import HARD_TIME_LIMIT, SOFT_TIME_LIMIT
from app.tasks.queues import Queue
from tests.support.app_cli import command_of

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.celery.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
SYSTEMD_DIR = ROOT / "deploy" / "systemd"
INSTALL_DIR = "/opt/celery-beat-service"
VENV_BIN = f"{INSTALL_DIR}/.venv/bin/"
WORKERS = ["celery_worker_high", "celery_worker_tracking", "celery_worker_evidence", "celery_worker_low"]
APP_SERVICES = ["migrate", *WORKERS, "celery_beat", "flower", "admin"]
IMAGE_SERVICES = [*APP_SERVICES, "carrier_simulator"]
IMAGE = "celery-beat-service:latest"
HEALTH_CHECKED = {**{name: "worker" for name in WORKERS}, "celery_beat": "beat", "flower": "flower", "admin": "admin"}
DOCS_AND_UNITS = [ROOT / "README.md", ROOT / "CELERY_BEAT_CONFIG.md", COMPOSE_FILE, ENV_EXAMPLE,
                  *sorted(SYSTEMD_DIR.iterdir())]
# What the docs said before several beats became safe; none of it may come back.
ONE_BEAT_ONLY = re.compile(r"exactly one|只能有一个|不要 scale|never scale|only one beat|只启用一个|sends every job twice"
                           r"|do not scale|one beat only|single beat", re.I)
TEST_ONLY_PACKAGES = {"pytest", "pytest-xdist", "pytest-timeout", "zxing-cpp", "pyyaml"}
UNITS = ["celery-beat.service", "celery-worker@.service", "celery-flower.service", "celery-admin.service"]
FLOWER_LOGIN = "ops:s3cret"
POSTGRES_PASSWORD = "pg-s3cret"
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
DURATION_SECONDS = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}


# -- helpers ---------------------------------------------------------------------------------


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def words(service: str) -> list[str]:
    command = compose()["services"][service]["command"]
    return shlex.split(command) if isinstance(command, str) else command


def option(argv: list[str], *names: str) -> str:
    """The value after the first of `names` in `argv`."""
    index = next(i for i, word in enumerate(argv) if word in names)
    return argv[index + 1]


def celery_subcommand(argv: list[str]) -> str | None:
    """'worker', 'beat', 'flower' … for `… celery -A MODULE SUBCOMMAND …`, else None."""
    if Path(argv[0]).name != "celery":
        return None
    return argv[argv.index("-A") + 2]


def seconds(duration: str) -> float:
    """A compose duration such as '660s' or '1m30s' in seconds."""
    parts = DURATION_PART.findall(duration)
    assert "".join(value + unit for value, unit in parts) == duration, f"unreadable duration {duration!r}"
    return sum(float(value) * DURATION_SECONDS[unit] for value, unit in parts)


def substituted_variables() -> set[str]:
    """Every ${VAR…} compose substitutes ($${VAR} is left to the container's shell)."""
    return set(re.findall(r"(?<!\$)\$\{(\w+)", COMPOSE_FILE.read_text(encoding="utf-8")))


def passed_through_variables() -> set[str]:
    """Environment entries without a value: handed over from .env or the shell when set."""
    return {name for service in compose()["services"].values()
            for name, value in (service.get("environment") or {}).items() if value is None}


def env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.startswith("#"))
    return dict(pairs)


def docker_compose(*args: str, env_file: Path, flower_login: str | None,
                   postgres_password: str | None = POSTGRES_PASSWORD) -> subprocess.CompletedProcess:
    """docker-compose on the compose file, seeing only `env_file` and the secrets given."""
    names = substituted_variables() | passed_through_variables()
    env = {name: value for name, value in os.environ.items() if name not in names}
    if flower_login:
        env["FLOWER_BASIC_AUTH"] = flower_login
    if postgres_password:
        env["POSTGRES_PASSWORD"] = postgres_password
    return subprocess.run(["docker-compose", "--env-file", str(env_file), "-f", str(COMPOSE_FILE), *args],
                          env=env, capture_output=True, text=True, timeout=60)


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string((SYSTEMD_DIR / name).read_text(encoding="utf-8"))
    return parser


def queues(listing: str) -> list[str]:
    return listing.split(",")


def assert_real_queues_covering_all(queue_lists: list[str]) -> None:
    named = [queue for listing in queue_lists for queue in queues(listing)]
    assert set(named) <= {q.value for q in Queue}, f"unknown queue in {queue_lists}"
    assert set(named) == {q.value for q in Queue}, f"some queue has no worker: {queue_lists}"


def assert_celery_app_module(argv: list[str]) -> None:
    module = importlib.import_module(option(argv, "-A"))
    assert isinstance(module.app, Celery)


@pytest.fixture
def empty_env_file(tmp_path) -> Path:
    path = tmp_path / "empty.env"
    path.touch()
    return path


needs_docker_compose = pytest.mark.skipif(shutil.which("docker-compose") is None,
                                          reason="docker-compose is not installed (apt-get install docker-compose)")


# -- docker-compose.celery.yml ---------------------------------------------------------------


@needs_docker_compose
def test_compose_file_is_valid_and_substitutes_the_environment(empty_env_file):
    result = docker_compose("config", env_file=empty_env_file, flower_login=FLOWER_LOGIN)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"] == FLOWER_LOGIN
    database_url = services["celery_beat"]["environment"]["DATABASE_URL"]
    assert database_url == f"postgresql://celery:{POSTGRES_PASSWORD}@postgres:5432/celery_beat"
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == POSTGRES_PASSWORD


@needs_docker_compose
def test_compose_refuses_to_start_without_a_database_password(empty_env_file):
    result = docker_compose("config", env_file=empty_env_file, flower_login=FLOWER_LOGIN, postgres_password=None)
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD must be set" in result.stderr


@needs_docker_compose
def test_compose_refuses_to_start_without_a_flower_login(empty_env_file):
    result = docker_compose("config", env_file=empty_env_file, flower_login=None)
    assert result.returncode != 0
    assert "FLOWER_BASIC_AUTH must be set" in result.stderr


@needs_docker_compose
def test_compose_accepts_env_example_once_the_secrets_are_set():
    refused = docker_compose("config", env_file=ENV_EXAMPLE, flower_login=None, postgres_password=None)
    assert "must be set" in refused.stderr and refused.returncode != 0
    filled = docker_compose("config", env_file=ENV_EXAMPLE, flower_login=FLOWER_LOGIN)
    assert filled.returncode == 0, filled.stderr
    environment = yaml.safe_load(filled.stdout)["services"]["admin"]["environment"]
    assert environment["DATABASE_URL"] == f"postgresql://celery:{POSTGRES_PASSWORD}@postgres:5432/celery_beat"
    assert environment["TRACKING_PROVIDER"] == env_example()["TRACKING_PROVIDER"]


def test_workers_consume_real_queues_and_together_all_five():
    assert all(celery_subcommand(words(name)) == "worker" for name in WORKERS)
    assert_real_queues_covering_all([option(words(name), "-Q", "--queues") for name in WORKERS])


def test_the_evidence_worker_has_chromium():
    assert "screenshot" in queues(option(words("celery_worker_evidence"), "-Q"))
    assert compose()["services"]["celery_worker_evidence"]["environment"]["CHROMIUM_PATH"] == "/usr/bin/chromium"
    assert re.search(r"apt-get install[^\n]*\bchromium\b[^\n]*\bfonts-wqy-microhei\b", DOCKERFILE.read_text())


def test_exactly_one_beat():
    services = compose()["services"]
    beats = [name for name in services if "command" in services[name] and celery_subcommand(words(name)) == "beat"]
    assert beats == ["celery_beat"]
    assert "-S" not in words("celery_beat") and "--scheduler" not in words("celery_beat")


@pytest.mark.parametrize("service", [name for name in APP_SERVICES if name not in ("migrate", "admin")])
def test_every_celery_app_module_imports(service):
    assert_celery_app_module(words(service))


def test_every_flower_runs_on_the_app_module_that_throttles_its_login():
    manager_argv = service_process(Settings(_env_file=None), "flower").argv
    unit_argv = shlex.split(unit("celery-flower.service")["Service"]["ExecStart"])
    for argv in (words("flower"), unit_argv, manager_argv):
        assert option(argv, "-A") == FLOWER_APP and argv[argv.index("-A") + 2] == "flower", argv


def test_migrate_runs_a_real_manager_command_once():
    argv = words("migrate")
    assert argv[:2] == ["python", "celery_beat_manager.py"]
    assert command_of(argv[2:]) == ("migrate", {})
    migrate = compose()["services"]["migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}


def test_app_services_wait_for_the_migration_and_healthy_backends():
    for name in APP_SERVICES[1:]:
        assert compose()["services"][name]["depends_on"] == {
            "redis": {"condition": "service_healthy"},
            "postgres": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
        }, name


def test_app_services_share_one_image_environment_and_init():
    services = compose()["services"]
    for name in IMAGE_SERVICES:
        service = services[name]
        assert (service["image"], service["init"]) == (IMAGE, True), name
        assert service["environment"]["CELERY_BROKER_URL"] == "redis://redis:6379/0", name
        assert service["environment"]["CELERY_RESULT_BACKEND"] == "redis://redis:6379/1", name
        assert service["environment"]["DATABASE_URL"].startswith("postgresql://"), name


def test_the_image_is_built_once_by_the_service_every_other_waits_for():
    services = compose()["services"]
    builders = [name for name, service in services.items() if "build" in service]
    assert builders == ["migrate"] and services["migrate"]["build"] == "."
    for name in IMAGE_SERVICES[1:]:
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}, name
    assert {service.get("image") for service in services.values() if service.get("image", "").startswith("celery")} \
        == {IMAGE}


@pytest.mark.parametrize("service", sorted(HEALTH_CHECKED))
def test_app_services_have_a_healthcheck_that_is_a_real_manager_command(service):
    check = compose()["services"][service]["healthcheck"]
    assert check["test"][:3] == ["CMD", "python", "celery_beat_manager.py"]
    assert command_of(check["test"][3:]) == ("health", {"service": HEALTH_CHECKED[service]})
    assert seconds(check["timeout"]) < seconds(check["interval"])


def test_the_carrier_simulator_serves_the_compose_network_where_the_workers_look():
    argv = words("carrier_simulator")
    assert argv[:4] == ["python", "-m", "app", "simulator"]
    assert option(argv, "--host") == "0.0.0.0"
    environment = compose()["services"]["celery_worker_tracking"]["environment"]
    assert environment["TRACKING_PROVIDER"] == "${TRACKING_PROVIDER:-simulator}"
    settings = Settings(_env_file=None, tracking_provider="simulator", simulator_host=environment["SIMULATOR_HOST"],
                        simulator_port=int(option(argv, "--port")))
    assert settings.carrier_url == f"http://carrier_simulator:{option(argv, '--port')}/poll/query.do"
    assert "carrier_simulator" in compose()["services"]
    assert "ports" not in compose()["services"]["carrier_simulator"], "reachable inside the compose network only"


def test_workers_may_finish_their_tasks_when_stopped():
    for name in WORKERS:
        grace = seconds(compose()["services"][name]["stop_grace_period"])
        assert grace > HARD_TIME_LIMIT > SOFT_TIME_LIMIT, name


@pytest.mark.parametrize("service", ["celery_beat", "flower", "admin"])
def test_other_services_stop_quickly(service):
    assert seconds(compose()["services"][service]["stop_grace_period"]) < SOFT_TIME_LIMIT


def test_admin_serves_the_wsgi_application():
    assert words("admin")[:2] == ["gunicorn", "app.core.wsgi:application"]


def test_volumes_are_mounted_where_the_image_keeps_its_data():
    image_env = dict(re.findall(r"(\w+)=(\S+)", re.search(r"^ENV (.+)$", DOCKERFILE.read_text(), re.M).group(1)))
    mounts = dict(volume.split(":")[::-1] for volume in compose()["services"]["celery_beat"]["volumes"])
    assert mounts[image_env["VAR_DIR"]] == "app_var"
    assert mounts[image_env["LOGS_DIR"]] == "app_logs"


def test_image_copies_files_that_exist_and_reach_the_build():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    sources = [source for line in re.findall(r"^COPY (.+)$", DOCKERFILE.read_text(), re.M)
               for source in line.split()[:-1]]
    assert "app/" in sources and "celery_beat_manager.py" in sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert source.rstrip("/") not in ignored, source
    assert {".env", ".venv", "var"} <= ignored  # secrets and local state stay out of the image


def test_image_runs_as_a_non_root_user():
    user = re.findall(r"^USER (\S+)$", DOCKERFILE.read_text(), re.M)
    assert user and user[-1] not in ("root", "0")


def test_image_has_the_library_playwrights_driver_needs():
    assert re.search(r"apt-get install[^\n]*\blibatomic1\b", DOCKERFILE.read_text())


def requirement_names(path: Path) -> set[str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return {re.split(r"[=<>\[ ]", line)[0].lower() for line in lines if line and not line.startswith("-")}


def test_image_installs_runtime_requirements_only_and_make_installs_the_tests_too():
    installed = re.findall(r"pip install[^\n]*-r (\S+)", DOCKERFILE.read_text())
    assert installed == ["requirements.txt"]
    assert not requirement_names(ROOT / "requirements.txt") & TEST_ONLY_PACKAGES
    test_requirements = ROOT / "requirements-test.txt"
    assert TEST_ONLY_PACKAGES <= requirement_names(test_requirements)
    assert "-r requirements.txt" in test_requirements.read_text().splitlines()
    stamp_rule = re.search(r"^\$\(STAMP\): (.+)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    assert stamp_rule == ["requirements.txt", "requirements-test.txt"]
    assert "pip install --quiet -r requirements-test.txt" in (ROOT / "Makefile").read_text()


@pytest.mark.parametrize("path", DOCS_AND_UNITS, ids=lambda path: path.name)
def test_no_document_or_unit_says_only_one_beat_may_run(path):
    said = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if ONE_BEAT_ONLY.search(line)]
    assert not said, f"{path.name} contradicts 'several beats are safe, one leads': {said}"


# -- .env.example ----------------------------------------------------------------------------


def test_env_example_lists_every_variable_the_compose_file_reads():
    assert substituted_variables() | passed_through_variables() <= set(env_example())


def test_every_env_example_variable_reaches_compose_or_the_app():
    unused = set(env_example()) - substituted_variables() - passed_through_variables()
    assert not unused, f"set in .env.example but read by nothing: {unused}"


def test_passed_through_variables_are_app_settings():
    fields = {name.upper() for name in Settings.model_fields}
    assert passed_through_variables() <= fields


@needs_docker_compose
def test_env_example_runs_on_the_simulator_until_kuaidi100s_three_variables_are_set(tmp_path):
    def worker_settings(env_file: Path) -> Settings:
        result = docker_compose("config", env_file=env_file, flower_login=FLOWER_LOGIN)
        assert result.returncode == 0, result.stderr
        environment = yaml.safe_load(result.stdout)["services"]["celery_worker_tracking"]["environment"]
        fields = set(Settings.model_fields)
        return Settings(_env_file=None, **{name.lower(): value for name, value in environment.items()
                                           if name.lower() in fields and value is not None})

    simulated = worker_settings(ENV_EXAMPLE)  # only the two secrets set
    assert simulated.carrier_url.startswith("http://carrier_simulator:")
    switched = tmp_path / ".env"
    switched.write_text(ENV_EXAMPLE.read_text(encoding="utf-8").replace("TRACKING_PROVIDER=simulator", "TRACKING_PROVIDER=kuaidi100")
                        .replace("KUAIDI100_CUSTOMER=\n", "KUAIDI100_CUSTOMER=customer\n")
                        .replace("KUAIDI100_KEY=\n", "KUAIDI100_KEY=key\n"), encoding="utf-8")
    kuaidi100 = worker_settings(switched)
    assert (kuaidi100.tracking_provider, kuaidi100.carrier_account) == ("kuaidi100", ("customer", "key"))
    assert kuaidi100.carrier_url == Settings.model_fields["kuaidi100_url"].default


def test_env_example_values_are_valid_settings_once_filled_in():
    required = {"KUAIDI100_CUSTOMER": "customer", "KUAIDI100_KEY": "key", "FLOWER_BASIC_AUTH": FLOWER_LOGIN}
    filled = {**env_example(), **required}
    fields = set(Settings.model_fields)
    Settings(_env_file=None, **{name.lower(): value for name, value in filled.items() if name.lower() in fields})


# -- systemd ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", UNITS)
def test_unit_runs_the_checkout_as_celery(name):
    service = unit(name)["Service"]
    assert service["User"] == "celery"
    assert service["WorkingDirectory"] == INSTALL_DIR
    assert service["EnvironmentFile"] == "/etc/celery-beat-service/env"
    assert service["Restart"] == "on-failure"
    assert (service["NoNewPrivileges"], service["ProtectSystem"], service["PrivateTmp"]) == ("yes", "full", "yes")
    assert service["ExecStart"].startswith(VENV_BIN)


@pytest.mark.parametrize("name", [n for n in UNITS if n != "celery-admin.service"])
def test_unit_celery_app_module_imports(name):
    assert_celery_app_module(shlex.split(unit(name)["Service"]["ExecStart"]))


def test_beat_unit_is_not_restarted_after_refusing_its_schedule():
    from app.core.exit_codes import EXIT_CONFIG_REFUSED

    assert unit("celery-beat.service")["Service"]["RestartPreventExitStatus"] == str(EXIT_CONFIG_REFUSED)


def test_beat_unit_migrates_before_starting():
    argv = shlex.split(unit("celery-beat.service")["Service"]["ExecStartPre"])
    assert argv[:2] == [f"{VENV_BIN}python", f"{INSTALL_DIR}/celery_beat_manager.py"]
    assert command_of(argv[2:]) == ("migrate", {})
    assert celery_subcommand(shlex.split(unit("celery-beat.service")["Service"]["ExecStart"])) == "beat"


def test_worker_unit_takes_its_queues_from_the_instance_and_stops_warmly():
    service = unit("celery-worker@.service")["Service"]
    assert option(shlex.split(service["ExecStart"]), "-Q") == "%I"
    assert service["KillMode"] == "mixed"
    assert int(service["TimeoutStopSec"]) > HARD_TIME_LIMIT


def test_worker_instances_in_the_install_steps_are_real_queues_covering_all_five():
    readme = (SYSTEMD_DIR / "README.md").read_text(encoding="utf-8")
    install = readme[readme.index("## Install"):readme.index("## Operate")]
    instances = re.findall(r"celery-worker@([\w\\]+)\.service", install)
    instances += re.findall(r"systemd-escape --template celery-worker@\.service ([\w,]+)", install)
    assert_real_queues_covering_all([instance.replace("\\x2c", ",") for instance in instances])


def test_admin_unit_serves_the_wsgi_application():
    argv = shlex.split(unit("celery-admin.service")["Service"]["ExecStart"])
    assert argv[:2] == [f"{VENV_BIN}gunicorn", "app.core.wsgi:application"]


def test_flower_unit_refuses_to_start_without_a_login():
    check = shlex.split(unit("celery-flower.service")["Service"]["ExecStartPre"])
    script = check[2].replace("$$", "$")  # systemd's escape for a literal $
    env = {name: value for name, value in os.environ.items() if name != "FLOWER_BASIC_AUTH"}
    refused = subprocess.run([check[0], "-c", script], env=env, capture_output=True, text=True)
    assert refused.returncode != 0 and "FLOWER_BASIC_AUTH must be set" in refused.stderr
    allowed = subprocess.run([check[0], "-c", script], env={**env, "FLOWER_BASIC_AUTH": FLOWER_LOGIN})
    assert allowed.returncode == 0


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_units_pass_systemd_analyze_verify(tmp_path):
    # Pointed at this checkout so that verify finds the venv's executables.
    for name in UNITS:
        text = (SYSTEMD_DIR / name).read_text(encoding="utf-8").replace(INSTALL_DIR, str(ROOT))
        (tmp_path / name).write_text(text, encoding="utf-8")
    instances = ["celery-worker@high_priority.service", "celery-worker@receipt\\x2cscreenshot.service"]
    verified = [name for name in UNITS if "@." not in name] + instances
    result = subprocess.run(["systemd-analyze", "verify", *verified], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "celery-" in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr
