#!/usr/bin/env bash
# container-test.sh - build the image and test the container for real, WITHOUT a Docker engine
# (buildah builds, podman runs; see shared/tools/container-smoke.sh, which this drives).
#
#   make container-test            # or: bash scripts/container-test.sh
#
# 1. shared/tools/container-smoke.sh on our Dockerfile: tools, hadolint, `docker-compose config`,
#    a local Debian base (python:* stand-in), the build, then a run: /healthz answers, the
#    process is not root, `podman healthcheck run` is healthy.
# 2. Then, on the same image and container storage, what a user does: a container with an
#    empty named volume at /models (filled from the image's demo specs), a read-only root
#    filesystem like docker-compose.yml's; /readyz turns ready once the demo models are
#    trained; list and predict with the read key, 401 without; every process non-root;
#    healthcheck healthy; SIGTERM stops it cleanly (exit 0) within the grace period; a
#    restart on the same volume is ready without training again; SIGTERM during the first
#    start's training stops it at once.
#
# Env: HPORT (host port, 18080), IMAGE (localhost/forecast-service:ci), KEEP=1 keeps the
#      container storage (base, stand-in, build cache: later runs are much faster),
#      READY_TIMEOUT (s, 300), CONTAINER_SMOKE (path of container-smoke.sh).
# The image refuses to start without API keys (it binds 0.0.0.0), and container-smoke.sh has
# no hook for `podman run` options, so a `podman` wrapper first on PATH adds `--env-file`
# (throwaway keys made here) to `podman run` only; everything else goes to podman unchanged.
# The build needs PyPI and the Debian mirror (through the host's network and CA certificates,
# which container-smoke.sh puts in its base image); nothing host-specific is in the Dockerfile.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
SMOKE=${CONTAINER_SMOKE:-}
if [ -z "$SMOKE" ]; then  # shared/ beside the checkout, else the workplace's own
  for candidate in "$REPO/../shared/tools/container-smoke.sh" /work/shared/tools/container-smoke.sh; do
    [ -f "$candidate" ] && { SMOKE=$candidate; break; }
  done
fi
[ -n "$SMOKE" ] && [ -f "$SMOKE" ] || { echo "container-smoke.sh not found beside the checkout ($REPO/../shared/tools) nor in /work/shared/tools; set CONTAINER_SMOKE" >&2; exit 2; }

export IMAGE=${IMAGE:-localhost/forecast-service:ci}
export HPORT=${HPORT:-18080} CPORT=8000 HEALTH_PATH=/healthz
export COMPOSE_FILE=$REPO/docker-compose.yml
export BUILDAH_LAYERS=true            # cache build layers (dependencies) between runs
W=${CTR_WORK:-/tmp/ctr}
READY_TIMEOUT=${READY_TIMEOUT:-300}
KEEP_STORAGE=${KEEP:-0}
T0=$SECONDS; t() { echo "=== [$((SECONDS - T0))s] $*"; }

# --- throwaway API keys for the test containers (never written to the repo) -----------------
TMP=$(mktemp -d)
READ_KEY=read-$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
ADMIN_KEY=admin-$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
ENV_FILE=$TMP/test.env
printf 'FORECAST_API_KEYS=admin:%s,read:%s\n' "$ADMIN_KEY" "$READ_KEY" > "$ENV_FILE"
# `docker-compose config` in a fresh checkout has no .env: compose reads this one instead
export API_ENV_FILE=$ENV_FILE

# --- podman wrapper: `podman run ...` -> `podman run --env-file $ENV_FILE ...` ----------------
mkdir -p "$TMP/bin"
cat > "$TMP/bin/podman" <<EOF
#!/usr/bin/env bash
real=\$(PATH=\${PATH#$TMP/bin:} command -v podman)
if [ "\${1:-}" = run ]; then shift; exec "\$real" run --env-file "$ENV_FILE" "\$@"; fi
exec "\$real" "\$@"
EOF
chmod +x "$TMP/bin/podman"

NAME=forecast-test-$$
VOLUME=forecast-test-models-$$
cleanup() {
  if [ -n "${CONTAINERS_CONF:-}" ]; then
    podman rm -f -t 3 "$NAME" >/dev/null 2>&1 || true
    podman volume rm -f "$VOLUME" >/dev/null 2>&1 || true
    if [ "$KEEP_STORAGE" != 1 ]; then
      podman system reset -f >/dev/null 2>&1 || true
      rm -rf "$W/storage" "$W/run" "$W/networks"
    fi
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT

# --- 1. the shared smoke test (keeps its storage: step 2 uses the image it built) -------------
t "container-smoke.sh $REPO"
PATH="$TMP/bin:$PATH" KEEP=1 bash "$SMOKE" "$REPO"
export CONTAINERS_STORAGE_CONF=$W/storage.conf CONTAINERS_CONF=$W/containers.conf
export BUILDAH_ISOLATION=chroot BUILDAH_FORMAT=docker

fail() { echo "FAIL: $*" >&2; podman logs "$NAME" 2>&1 | tail -40 >&2 || true; exit 1; }
# curl with the read key (or none with -n): prints the body, fails on >= 400
api() { local auth=(-H "Authorization: Bearer $READ_KEY"); [ "$1" = -n ] && { auth=(); shift; }
        curl -fsS -m 30 "${auth[@]}" "$@"; }
wait_ready() {  # $1: seconds; returns when /readyz is 200
  local deadline=$((SECONDS + $1)) code
  while [ $SECONDS -lt $deadline ]; do
    [ "$(podman inspect -f '{{.State.Running}}' "$NAME")" = true ] || fail "container exited"
    code=$(curl -s -o /dev/null -w '%{http_code}' -m 2 "http://127.0.0.1:$HPORT/readyz" || true)
    [ "$code" = 200 ] && return 0
    sleep 2
  done
  fail "/readyz not ready after $1 s (last status $code)"
}
run_container() {  # like docker-compose.yml's api: read-only root, tmpfs /tmp, volumes
  podman run -d --name "$NAME" --env-file "$ENV_FILE" --read-only --tmpfs /tmp \
    --health-interval=disable --stop-timeout 30 \
    -v "$VOLUME:/models" -p "127.0.0.1:$HPORT:$CPORT" "$IMAGE" >/dev/null
}

# --- 2. the image as a user runs it -----------------------------------------------------------
t "hadolint --failure-threshold warning"
"$W/venv/bin/hadolint" --no-color --failure-threshold warning "$REPO/Dockerfile"
t "docker-compose config (default and --profile scale)"
docker-compose -f "$COMPOSE_FILE" config -q
docker-compose -f "$COMPOSE_FILE" --profile scale config -q
echo "compose OK"

t "image: $(podman image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}')"
podman run --rm --entrypoint sh "$IMAGE" -c '
  python -c "import dask.distributed, psycopg" 2>/dev/null && echo "scale extra: dask.distributed + psycopg present" \
    || echo "WARNING: no dask/psycopg in the image (pyproject.toml extra [scale] missing?)"
  for f in /opt/venv/bin/pip /usr/bin/gcc /usr/bin/cc /usr/bin/make /root/.cache/pip; do
    [ ! -e $f ] || { echo "not expected in the final image: $f"; exit 1; }
  done
  ! ls /var/lib/apt/lists | grep -q -v -e "^partial$" -e "^lock$" || { echo "apt lists left in the image"; exit 1; }
  echo "no venv pip, compiler, pip cache or apt lists"'

t "first start: empty named volume at /models, read-only root filesystem"
podman volume create "$VOLUME" >/dev/null
started=$SECONDS
run_container
wait_ready "$READY_TIMEOUT"
echo "ready after $((SECONDS - started)) s (demo models trained in the container)"

t "API with the read key"
models=$(api "http://127.0.0.1:$HPORT/v1/models")
for m in $(ls "$REPO/models"); do
  grep -q "\"$m\"" <<<"$models" || fail "model $m not listed: $models"
done
echo "listed: $(ls "$REPO/models" | tr '\n' ' ')"
forecast=$(api -X POST -H 'content-type: application/json' -d '{"horizon": 3, "coverage": [0.8]}' \
  "http://127.0.0.1:$HPORT/v1/models/airline/predict")
python3 -c 'import json, sys; body = json.loads(sys.argv[1]); assert body, body; print("predict airline:", sys.argv[1][:160])' "$forecast"
code=$(curl -s -o /dev/null -w '%{http_code}' -m 10 -X POST -H 'content-type: application/json' \
  -d '{"horizon": 3}' "http://127.0.0.1:$HPORT/v1/models/airline/predict")
[ "$code" = 401 ] || fail "predict without a key: $code, expected 401"
echo "without a key: 401"

t "non-root, healthcheck, volume"
users=$(podman top "$NAME" user huser | tail -n +2)
echo "$users"
awk '$1 == "root" || $1 == "0" || $2 == "0" {bad = 1} END {exit bad}' <<<"$users" || fail "a process runs as root"
[ "$(podman exec "$NAME" id -u)" != 0 ] || fail "exec user is root"
podman healthcheck run "$NAME" >/dev/null || fail "healthcheck unhealthy"
echo "HEALTHCHECK: $(podman inspect -f '{{.State.Health.Status}}' "$NAME")"
podman exec "$NAME" sh -c 'ls /models/airline/versions' | grep -qx 1 || fail "no trained version in the volume"
podman exec "$NAME" sh -c 'touch /home/forecast/x 2>/dev/null' && fail "root filesystem is writable"
echo "volume holds the trained versions; root filesystem read-only"

t "graceful stop (SIGTERM via tini)"
stop_started=$SECONDS
podman stop -t 30 "$NAME" >/dev/null
took=$((SECONDS - stop_started)); rc=$(podman inspect -f '{{.State.ExitCode}}' "$NAME")
podman logs "$NAME" 2>&1 | tail -3
[ "$rc" = 0 ] || fail "exit code $rc after SIGTERM"
[ "$took" -lt 25 ] || fail "stop took $took s (SIGTERM not handled?)"
echo "stopped in $took s, exit 0"
podman rm "$NAME" >/dev/null

t "restart on the same volume: no training"
started=$SECONDS
run_container
wait_ready 60
echo "ready after $((SECONDS - started)) s"
podman logs "$NAME" 2>&1 | grep -q 'training .* without a version' && fail "trained again on restart"
podman rm -f -t 30 "$NAME" >/dev/null

t "SIGTERM while the first start is still training (tini forwards it)"
podman volume rm -f "$VOLUME" >/dev/null && podman volume create "$VOLUME" >/dev/null
run_container
sleep 8
stop_started=$SECONDS
podman stop -t 30 "$NAME" >/dev/null
took=$((SECONDS - stop_started))
[ "$took" -lt 15 ] || fail "stop during training took $took s (SIGTERM ignored?)"
echo "stopped in $took s (exit $(podman inspect -f '{{.State.ExitCode}}' "$NAME"))"
podman rm -f "$NAME" >/dev/null

t "PASS: container test"
