#!/usr/bin/env bash
# Runs docker-compose.celery.yml for real, the way README says (issue 17): podman + Debian's
# docker-compose 1.29, the README's commands in a copy of the checkout, then the checks below.
# Where no image registry is reachable, the base images are stand-ins built from Debian packages
# (deploy/ci/standins/): a result that depends on the official base images is not tested here.
#
#   deploy/ci/compose_run.sh          # exit 0 = every check passed, or "skipped: <reason>"
#   COMPOSE_RUN=skip deploy/ci/compose_run.sh
#   COMPOSE_RUN_KEEP=1 deploy/ci/compose_run.sh   # leave the project up for a look (prints how to remove it)
#
# Cleans up after itself: only this run's compose project (its containers, volumes and network),
# the podman service and health-check loop it started, and its temporary directory. Images stay,
# so the next run builds from cache.
set -euo pipefail

CHECKOUT=$(cd "$(dirname "$0")/../.." && pwd)
STANDINS="$CHECKOUT/deploy/ci/standins"
COMPOSE_FILE=docker-compose.celery.yml
PROJECT="cbs_ci_$$"
SOCKET=/run/podman/podman.sock
export DOCKER_HOST="unix://$SOCKET"
WORK=""
SERVICE_PID=""
HEALTH_LOOP_PID=""

say() { echo "compose-run: $*"; }
fail() { echo "compose-run: FAILED: $*" >&2; exit 1; }
skip() { echo "compose-run: skipped: $*"; exit 0; }
measure() { echo "compose-run: measure: $*"; }

# ---- preconditions -------------------------------------------------------------------------

check_can_run() {
    [ "${COMPOSE_RUN:-}" != skip ] || skip "COMPOSE_RUN=skip"
    [ "$(uname -s)" = Linux ] || skip "podman needs Linux"
    [ "$(id -u)" = 0 ] || skip "needs root (rootless podman is not set up on the CI machines)"
    command -v apt-get >/dev/null || command -v podman >/dev/null || skip "no podman and no apt-get to install it"
}

# iptables: netavark sets up the network with it; catatonit: the init of `init: true`.
PACKAGES=(podman docker-compose netavark aardvark-dns runc slirp4netns fuse-overlayfs uidmap debootstrap iptables catatonit)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

install_packages() {
    local missing=() package
    for package in "${PACKAGES[@]}"; do installed "$package" || missing+=("$package"); done
    [ ${#missing[@]} -eq 0 ] && return
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

configure_podman() {  # runc, ulimits and netavark, unless someone configured podman already
    if [ ! -e /etc/containers/containers.conf ]; then
        install -D -m 644 "$STANDINS/containers.conf" /etc/containers/containers.conf
    fi
    podman info >/dev/null 2>"${TMPDIR:-/tmp}/podman-info.$$" \
        || skip "podman cannot run here: $(head -c 300 "${TMPDIR:-/tmp}/podman-info.$$")"
    rm -f "${TMPDIR:-/tmp}/podman-info.$$"
}

socket_answers() { curl -sf --max-time 2 --unix-socket "$SOCKET" http://d/_ping >/dev/null 2>&1; }

start_podman_service() {  # the Docker-compatible API docker-compose talks to
    socket_answers && return
    mkdir -p "$(dirname "$SOCKET")"
    podman system service --time=0 "unix://$SOCKET" >/dev/null 2>&1 &
    SERVICE_PID=$!
    for _ in $(seq 1 50); do socket_answers && return; sleep 0.2; done
    fail "podman system service did not answer on $SOCKET"
}

start_health_loop() {  # podman schedules HEALTHCHECKs with systemd timers; there is no systemd here
    # A container not yet healthy is checked every 3 s, a healthy one every 30 s (the compose file's
    # interval): each check starts a Python process, and checking all of them every 3 s on 2 cores
    # made the checks themselves time out while the machine was busy.
    (
        local round=0 id
        while sleep 3; do
            round=$((round + 1))
            for id in $(podman ps -q --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null); do
                if [ $((round % 10)) -eq 0 ] \
                    || [ "$(podman inspect "$id" --format '{{.State.Health.Status}}' 2>/dev/null)" != healthy ]; then
                    podman healthcheck run "$id" >/dev/null 2>&1 &
                fi
            done
            wait
        done
    ) &
    HEALTH_LOOP_PID=$!
}

cleanup() {
    local status=$?
    set +e
    if [ "${COMPOSE_RUN_KEEP:-}" = 1 ]; then
        say "COMPOSE_RUN_KEEP=1: left project $PROJECT and $WORK for a look; clean up with" \
            "(cd $WORK/checkout && DOCKER_HOST=$DOCKER_HOST docker-compose -p $PROJECT -f $COMPOSE_FILE down -v)" \
            "${SERVICE_PID:+, then kill $SERVICE_PID (the podman service it started)}"
        exit $status
    fi
    if [ -n "$WORK" ] && [ -d "$WORK/checkout" ]; then
        (cd "$WORK/checkout" && timeout 120 docker-compose -p "$PROJECT" -f "$COMPOSE_FILE" down -v --remove-orphans -t 10 >/dev/null 2>&1)
    fi
    for id in $(podman ps -aq --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null); do
        podman rm -f -v "$id" >/dev/null 2>&1
    done
    for volume in $(podman volume ls -q --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null); do
        podman volume rm -f "$volume" >/dev/null 2>&1
    done
    podman network rm -f "${PROJECT}_default" >/dev/null 2>&1
    [ -n "$HEALTH_LOOP_PID" ] && kill "$HEALTH_LOOP_PID" 2>/dev/null
    [ -n "$SERVICE_PID" ] && kill "$SERVICE_PID" 2>/dev/null
    if [ -n "$WORK" ]; then
        findmnt -rno TARGET | grep "^$WORK/" | sort -r | xargs -r umount -l 2>/dev/null
        rm -rf --one-file-system "$WORK"
    fi
    exit $status
}

# ---- base images ---------------------------------------------------------------------------

registry_reachable() {
    [ "$(curl -s -o /dev/null --max-time 5 -w '%{http_code}' https://registry-1.docker.io/v2/ 2>/dev/null)" = 401 ]
}

debian_mirror() {  # the mirror apt already uses here
    local mirror
    mirror=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -m1 '/debian/*$' || true)
    [ -n "$mirror" ] || mirror=$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -m1 '/debian/*$' || true)
    echo "${mirror:-http://deb.debian.org/debian}"
}

build_debian_base() {  # localhost/debian:bookworm-slim from debootstrap, slimmed like the official one
    podman image exists localhost/debian:bookworm-slim && return
    local root="$WORK/rootfs" mirror
    mirror=$(debian_mirror)
    say "debootstrap bookworm from $mirror"
    debootstrap --variant=minbase bookworm "$root" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
        || fail "debootstrap failed: $(tail -3 "$WORK/debootstrap.log")"
    if [ -e /etc/apt/sources.list.d/debian.sources ]; then
        cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/"
        rm -f "$root/etc/apt/sources.list"
    fi
    printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d" && chmod +x "$root/usr/sbin/policy-rc.d"
    cat > "$root/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
    find "$root/usr/share/doc" -mindepth 2 ! -name copyright -type f -delete
    rm -rf "$root"/usr/share/{man,info,locale}/* "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
        "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*.log
    tar -C "$root" -c . | podman import - localhost/debian:bookworm-slim >/dev/null 2>&1
    rm -rf --one-file-system "$root"
}

build_standin() {  # build_standin KIND NAME: KIND is python, redis or postgres
    local kind=$1 name=$2 context="$WORK/standin-$1"
    podman image exists "$name" && return
    build_debian_base
    mkdir -p "$context/ca"
    cp "$STANDINS/$kind.Dockerfile" "$context/Dockerfile"
    cp "$STANDINS"/*-entrypoint.sh "$context/"
    cp /usr/local/share/ca-certificates/*.crt "$context/ca/" 2>/dev/null || true  # egress re-signs TLS
    say "building stand-in $name from Debian packages"
    podman build -q --network host --format docker -t "$name" "$context" >"$WORK/standin-$kind.log" 2>&1 \
        || fail "stand-in $name did not build: $(tail -5 "$WORK/standin-$kind.log")"
}

provide_base_image() {  # provide_base_image NAME: pull it, or build a stand-in under that name
    local name=$1 kind
    podman image exists "$name" && return
    if registry_reachable; then
        podman pull -q "docker.io/library/$name" >/dev/null && podman tag "docker.io/library/$name" "$name" && return
    fi
    case "${name%%:*}" in
        python|*/python) kind=python ;;
        redis|*/redis) kind=redis ;;
        postgres|*/postgres) kind=postgres ;;
        *) fail "no image registry and no stand-in for $name" ;;
    esac
    build_standin "$kind" "$name"
}

# What the resolved compose file (docker-compose config, .env applied) uses. Output lines:
#   pull IMAGE                 a service's image without build
#   build IMAGE CONTEXT DOCKERFILE   an image compose would build
compose_images() {
    docker-compose -p "$PROJECT" -f "$COMPOSE_FILE" config | python3 -c '
import sys, yaml
project = sys.argv[1]
services = yaml.safe_load(sys.stdin)["services"]
built = {}
for name, service in services.items():
    build = service.get("build")
    if build:
        build = {"context": build} if isinstance(build, str) else build
        image = service.get("image") or f"{project}_{name}"
        built[image] = (build["context"], build.get("dockerfile", "Dockerfile"))
pulled = {service["image"] for service in services.values() if service.get("image") and service["image"] not in built}
for image in sorted(pulled):
    print("pull", image)
for image, (context, dockerfile) in built.items():
    print("build", image, context, dockerfile)
' "$PROJECT"
}

dockerfile_bases() {  # dockerfile_bases FILE: the FROM images, ARG defaults applied, stages skipped
    python3 - "$1" <<'EOF'
import re, sys
args, stages = {}, set()
for line in open(sys.argv[1]):
    words = line.split()
    if len(words) >= 2 and words[0].upper() == "ARG" and "=" in words[1]:
        key, value = words[1].split("=", 1)
        args.setdefault(key, value)
    elif len(words) >= 2 and words[0].upper() == "FROM":
        image = next(word for word in words[1:] if not word.startswith("--"))
        image = re.sub(r"\$\{?(\w+)\}?", lambda match: args.get(match.group(1), ""), image)
        if image not in stages and image != "scratch":
            print(image)
        if len(words) >= 4 and words[-2].upper() == "AS":
            stages.add(words[-1])
EOF
}

# ---- the stack -----------------------------------------------------------------------------

dc() { docker-compose -p "$PROJECT" -f "$COMPOSE_FILE" "$@"; }
in_beat() { dc exec -T celery_beat "$@" </dev/null; }  # exec reads stdin otherwise

copy_checkout() {  # tracked and new files as they are now, so .env never lands in the real checkout
    mkdir -p "$WORK/checkout"
    (cd "$CHECKOUT" && git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' file; do [ -e "$file" ] && printf '%s\0' "$file"; done \
        | tar -c --null -T - ) | tar -C "$WORK/checkout" -x
}

set_env() {  # set_env NAME VALUE in .env
    if grep -q "^$1=" .env; then sed -i "s|^$1=.*|$1=$2|" .env; else echo "$1=$2" >> .env; fi
}

port_free() { ! ss -Hltn "( sport = :$1 )" | awk '{print $4}' | grep -Eq "^(0\.0\.0\.0|\*|\[::\]|$PUBLISH):$1$"; }

write_env() {  # the README: copy .env.example, set FLOWER_BASIC_AUTH and POSTGRES_PASSWORD
    cp .env.example .env
    FLOWER_LOGIN="ci:$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    set_env POSTGRES_PASSWORD "$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    set_env FLOWER_BASIC_AUTH "$FLOWER_LOGIN"
    PUBLISH="127.0.$(( $$ % 250 + 2 )).$(( RANDOM % 250 + 2 ))"  # a loopback address of our own
    set_env PUBLISH_ADDRESS "$PUBLISH"
    port_free 5555 && port_free 8000 || fail "ports 5555/8000 are taken on every address; cannot publish"
}

build_images() {
    local kind image context dockerfile started
    compose_images > "$WORK/images" || fail "docker-compose config failed"
    while read -r kind image context dockerfile; do
        if [ "$kind" = pull ]; then provide_base_image "$image"; continue; fi
        for base in $(dockerfile_bases "$context/$dockerfile"); do provide_base_image "$base"; done
        started=$SECONDS
        podman build -q --network host --format docker -t "$image" -f "$context/$dockerfile" "$context" \
            >"$WORK/build.log" 2>&1 || fail "podman build of $image failed: $(tail -15 "$WORK/build.log")"
        measure "build of $image: $((SECONDS - started)) s"
        measure "image size of $image: $(podman image inspect "$image" --format '{{.Size}}' \
            | awk '{printf "%.2f GB", $1 / 1e9}') (target <= 1.0 GB; base: $(dockerfile_bases "$context/$dockerfile" | tr '\n' ' '))"
    done < "$WORK/images"
}

project_containers() { podman ps -a --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}}'; }

container_state() {  # NAME -> "running healthy", "exited 0", "running none", ...
    local status health code
    read -r status health code < <(podman inspect "$1" --format '{{.State.Status}} {{.State.Health.Status}}- {{.State.ExitCode}}')
    health=${health%-}
    echo "$status ${health:-none} $code"
}

wait_healthy() {  # every container running (and healthy where it has a check); one-shot ones exited 0
    local deadline=$((SECONDS + ${1:-240})) pending name state
    while :; do
        pending=""
        for name in $(project_containers); do
            state=$(container_state "$name")
            case "$state" in
                "running healthy "*|"running none "*|"exited "*" 0"|"exited none 0") ;;
                "exited "*) fail "$name exited: $state; its log: $(podman logs --tail 15 "$name" 2>&1)" ;;
                *) pending+=" $name($state)" ;;
            esac
        done
        [ -z "$pending" ] && [ -n "$(project_containers)" ] && return
        [ $SECONDS -lt $deadline ] || fail "not up and healthy within the limit:$pending"
        sleep 2
    done
}

service_log() { dc logs --no-color "$1" 2>&1; }

failed_logs() {  # the last log lines of every container of the project that exited non-zero
    local name
    for name in $(project_containers); do
        case "$(container_state "$name")" in
            "exited "*" 0") ;;
            "exited "*) echo "--- $name: $(container_state "$name")"; podman logs "$name" 2>&1 | tail -20 ;;
        esac
    done
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2 deadline
    shift 2
    deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || fail "$what: not within $seconds s"
        sleep 1
    done
}

worker_logged() {  # worker_logged SERVICE PATTERN
    service_log "$1" | grep -E "$2" >/dev/null
}

two_beats_one_leader() { [ "$(beat_heartbeats)" = "2 1" ]; }

check_beat_leads() {
    in_beat python celery_beat_manager.py status >"$WORK/status.txt" 2>&1 \
        || fail "celery_beat_manager.py status inside compose exits $? while beat runs: $(head -20 "$WORK/status.txt")"
    [ "$(beat_heartbeats)" = "1 1" ] || fail "expected one fresh beat heartbeat, leading; got (fresh leading) $(beat_heartbeats)"
    say "ok: beat leads (status exit 0, one fresh heartbeat, leading)"
}

beat_heartbeats() {  # "FRESH LEADING": beats with a heartbeat in the last 30 s, and how many lead
    dc exec -T redis redis-cli --raw EVAL "
        local now = redis.call('TIME'); local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
        local fresh, leading = 0, 0
        for _, key in ipairs(redis.call('KEYS', 'beat:heartbeat:*')) do
            local beat = redis.call('HMGET', key, 'beat_ms', 'leading')
            if tonumber(beat[1]) and now_ms - tonumber(beat[1]) < 30000 then
                fresh = fresh + 1
                if beat[2] == '1' then leading = leading + 1 end
            end
        end
        return fresh .. ' ' .. leading" 0 </dev/null | tr -d '\r'
}

check_each_worker_runs_a_task() {  # check_each_worker_runs_a_task UP_STARTED: one job per queue group
    local up_started=$1 service job id
    while read -r service job; do
        id=$(in_beat python celery_beat_manager.py run --no-wait "$job" 2>/dev/null | tr -d '\r' | tail -1)
        [ -n "$id" ] || fail "celery_beat_manager.py run --no-wait $job printed no task id"
        wait_for 180 "$service running $job ($id)" worker_logged "$service" "\\[$id\\] succeeded"
        [ -z "$up_started" ] || measure "up -d to the first executed task ($job, sent at once): $((SECONDS - up_started)) s"
        up_started=""
        say "ok: $service ran $job"
    done <<'EOF'
celery_worker_high system-health-check
celery_worker_tracking update-tracking-status
celery_worker_low cleanup-temp-files
EOF
}

# Prints the file of the delivery's first receipt (sys.argv[1]), nothing while it has none.
RECEIPT_FILE_PY='
import json, subprocess, sys
from app.core.config import get_settings
shown = subprocess.run([sys.executable, "-m", "app", "receipts", "show", sys.argv[1], "--json"],
                       capture_output=True, text=True, check=True)
receipts = json.loads(shown.stdout)
if receipts:
    print(get_settings().files_path / receipts[0]["path"])
'

receipt_verified() {  # receipt_verified ID: the delivery has a receipt whose file verifies
    local file
    file=$(in_beat python -c "$RECEIPT_FILE_PY" "$1" 2>/dev/null | tr -d '\r')
    [ -n "$file" ] && in_beat python -m app receipts verify "$file" 2>&1 | grep '^OK' >/dev/null
}

check_delivery_evidence() {
    local output
    output=$(in_beat python -m app deliveries add --reference "CI-$PROJECT" --recipient-name 张三 \
        --phone 13800138000 --address 北京市朝阳区建国路1号 --carrier ems --tracking-number EM100000001CN 2>&1) \
        || fail "deliveries add: $output"
    DELIVERY_ID=$(echo "$output" | sed -n 's/^registered delivery \([0-9]*\):.*/\1/p')
    [ -n "$DELIVERY_ID" ] || fail "deliveries add printed no id: $output"
    wait_for 180 "delivery $DELIVERY_ID delivered with a verified receipt" receipt_verified "$DELIVERY_ID"
    worker_logged celery_worker_evidence 'capture_tracking_screenshot.*succeeded' \
        || fail "the evidence worker did not log the screenshot task"
    say "ok: delivery $DELIVERY_ID got its screenshot and a receipt that verifies (evidence worker)"
}

http_status() {  # http_status URL [curl options]
    local url=$1
    shift
    curl -s -o /dev/null --max-time 10 -w '%{http_code}' "$@" "$url"
}

check_web() {
    local status
    status=$(http_status "http://$PUBLISH:5555/")
    [ "$status" = 401 ] || fail "Flower without login answered $status, not 401"
    status=$(http_status "http://$PUBLISH:5555/" -u "$FLOWER_LOGIN")
    [ "$status" = 200 ] || fail "Flower with the login answered $status, not 200"
    status=$(http_status "http://$PUBLISH:8000/admin/login/" -H "Host: localhost")
    [ "$status" = 200 ] || fail "the admin's login page answered $status, not 200"
    curl -s --max-time 10 -H "Host: localhost" "http://$PUBLISH:8000/admin/login/" | grep 'name="password"' >/dev/null \
        || fail "the admin's login page has no password field"
    say "ok: Flower 401 without and 200 with the login; admin serves its login page"
}

check_two_beats_one_leader() {
    dc up -d --scale celery_beat=2 >"$WORK/scale.log" 2>&1 || fail "up --scale celery_beat=2: $(tail -5 "$WORK/scale.log")"
    wait_healthy 120
    wait_for 60 "two fresh beat heartbeats, one leading" two_beats_one_leader
    sleep 10  # a standby that wrongly took over would show now
    two_beats_one_leader || fail "two beats should have one leader; got (fresh leading) $(beat_heartbeats)"
    say "ok: --scale celery_beat=2 runs two beats, one leads"
    dc up -d --scale celery_beat=1 >/dev/null 2>&1
}

check_data_survives_down_up() {
    local started
    started=$SECONDS
    dc down >"$WORK/down.log" 2>&1 || fail "down: $(tail -5 "$WORK/down.log")"
    measure "down: $((SECONDS - started)) s"
    [ -z "$(podman ps -q --filter "label=com.docker.compose.project=$PROJECT")" ] || fail "containers still running after down"
    dc up -d >"$WORK/up2.log" 2>&1 || fail "second up -d: $(tail -5 "$WORK/up2.log"; failed_logs)"
    wait_healthy 240
    receipt_verified "$DELIVERY_ID" || fail "after down and up -d, delivery $DELIVERY_ID or its receipt file is gone"
    say "ok: down then up -d keeps the delivery, its receipt and the file"
}

check_down_v_leaves_nothing() {
    dc down -v >"$WORK/down-v.log" 2>&1 || fail "down -v: $(tail -5 "$WORK/down-v.log")"
    [ -z "$(podman ps -aq --filter "label=com.docker.compose.project=$PROJECT")" ] || fail "containers left after down -v"
    [ -z "$(podman volume ls -q --filter "label=com.docker.compose.project=$PROJECT")" ] || fail "volumes left after down -v"
    ! podman network exists "${PROJECT}_default" || fail "network ${PROJECT}_default left after down -v"
    say "ok: down -v leaves no container, volume or network of $PROJECT"
}

print_memory() {
    podman stats --no-stream --format '{{.Name}} {{.MemUsage}}' $(project_containers | grep -v _migrate_) \
        | while read -r line; do measure "memory: $line"; done
}

main() {
    local total_started=$SECONDS up_started
    check_can_run
    install_packages
    configure_podman
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/compose-run.XXXXXX")
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    start_podman_service
    start_health_loop
    copy_checkout
    cd "$WORK/checkout"
    write_env
    say "project $PROJECT, published on $PUBLISH"
    build_images

    up_started=$SECONDS
    dc up -d >"$WORK/up.log" 2>&1 || fail "up -d: $(tail -15 "$WORK/up.log"; failed_logs)"
    check_each_worker_runs_a_task "$up_started"
    wait_healthy 240
    measure "up -d to every service healthy: $((SECONDS - up_started)) s"
    say "ok: every service up and healthy: $(project_containers | tr '\n' ' ')"

    check_beat_leads
    check_delivery_evidence
    check_web
    print_memory
    check_two_beats_one_leader
    check_data_survives_down_up
    check_down_v_leaves_nothing
    measure "whole compose run: $((SECONDS - total_started)) s"
    say "all checks passed"
}

main "$@"
