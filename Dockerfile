# forecast-service: the API (and, with the same image, Dask scheduler and workers).
#
#   docker build -t forecast-service .
#   docker run -p 8000:8000 --stop-timeout 30 \
#       -e FORECAST_API_KEYS='admin:<16+ chars>,read:<16+ chars>' \
#       -v forecast-models:/models -v forecast-data:/data forecast-service
#
# * Keys are required. The server binds 0.0.0.0 in a container, and the service refuses to
#   serve a non-loopback address without API keys (FORECAST_API_KEYS or FORECAST_API_KEYS_FILE,
#   e.g. a mounted secret). `--insecure` exists for throwaway experiments only.
# * /models is the registry, /data the data dir (datasets, job files, the SQLite job store).
#   The image's /models holds the demo specs (model.yaml only). Docker and Podman fill an
#   EMPTY named or anonymous volume with the image's content at that path on first mount
#   (owner and mode included), so a fresh volume starts with the demo specs and
#   `serve --train-missing` (the CMD) trains them on the first start (~30-60 s on 2 cores;
#   /healthz answers once training is done, hence the healthcheck's start period). Later
#   starts find the versions in the volume. A bind mount is never filled from the image:
#   bring your own registry (writable by uid 10001) or copy models/ into it.
# * Graceful stop: SIGTERM -> tini -> uvicorn, which lets in-flight requests finish for
#   FORECAST_SHUTDOWN_TIMEOUT (20 s) seconds. Give the container more than that before the
#   SIGKILL: `docker run --stop-timeout 30`, compose `stop_grace_period: 30s`.
# * Extras: EXTRAS=scale (default) adds dask[distributed] and psycopg for the scale-out
#   profile of docker-compose.yml; `--build-arg EXTRAS=` builds a lean image.
# * Read-only root filesystem works (docker-compose.yml runs it so) given a writable /tmp:
#   `docker run --read-only --tmpfs /tmp ...` (matplotlib's MPLCONFIGDIR and caches are there).
# * Rebuilds: the dependency layer is cached until pyproject.toml changes. Versions are
#   resolved from pyproject.toml's ranges at build time and the base is pinned by tag only;
#   pin it by digest (python:3.11-slim-bookworm@sha256:...) and install from a lock file for
#   bit-for-bit rebuilds.

# ---------------------------------------------------------------------------------------
# builder: a virtualenv in /opt/venv with the dependencies, then the service without them
FROM python:3.11-slim-bookworm AS builder

ARG EXTRAS=scale
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

WORKDIR /src
# pip >= 24.2 verifies TLS against the system's CA store (truststore), so a build behind a
# TLS-inspecting proxy only needs the proxy's CA in the base image, not in pip's config.
RUN python -m venv /opt/venv \
    && pip install --upgrade "pip>=24.2,<27"

# Third-party dependencies only, listed from pyproject.toml ([project] dependencies plus the
# extras in EXTRAS): this layer is rebuilt only when pyproject.toml or EXTRAS change, not
# when the source does.
COPY pyproject.toml ./
RUN python -c 'import os, sys, tomllib; \
project = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
extras = [e.strip() for e in os.environ.get("EXTRAS", "").split(",") if e.strip()]; \
missing = [e for e in extras if e not in project.get("optional-dependencies", {})]; \
missing and sys.exit(f"pyproject.toml has no optional-dependencies extra {missing}"); \
print("\n".join(project["dependencies"] + [r for e in extras for r in project["optional-dependencies"][e]]))' \
        > /tmp/requirements.txt \
    && cat /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && pip check \
    && python -c 'import sys; from importlib.metadata import distributions; \
cuda = sorted({d.metadata["Name"] for d in distributions() if d.metadata["Name"].lower().startswith("nvidia-")}); \
cuda and sys.exit(f"CUDA libraries in a CPU image: {cuda} (pyproject.toml installs xgboost-cpu)")'
# (pyproject.toml asks for xgboost-cpu: the `xgboost` wheel bundles CUDA, 210 MB, and pulls
# nvidia-nccl-cu12, 470 MB, that a CPU-only image never opens. The check fails the build if a
# dependency brings any NVIDIA library back.)

# The service itself (a wheel built in an isolated environment), no dependencies; then
# drop what only installing needed.
COPY README.md ./
COPY service ./service
RUN pip install --no-deps . \
    && pip uninstall -y setuptools \
    && pip uninstall -y pip

# ---------------------------------------------------------------------------------------
# runtime: slim Python, the venv, tini, libgomp (LightGBM's OpenMP), a non-root user
FROM python:3.11-slim-bookworm

# DL3008 (apt versions not pinned) is ignored on purpose: Debian stable drops a package's
# old version from the archive at each point release, so exact pins break rebuilds, and
# bookworm keeps these libraries' ABI stable.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 forecast \
    && useradd --system --uid 10001 --gid forecast --home-dir /home/forecast --create-home \
        --shell /usr/sbin/nologin forecast \
    && install -d -o forecast -g forecast -m 0755 /models /data

COPY --from=builder /opt/venv /opt/venv
# Demo specs only (.dockerignore keeps trained versions, aliases and locks out).
COPY --chown=10001:10001 models/ /models/

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache \
    FORECAST_REGISTRY=/models \
    FORECAST_DATA_DIR=/data \
    FORECAST_HOST=0.0.0.0 \
    FORECAST_PORT=8000 \
    FORECAST_SHUTDOWN_TIMEOUT=20

LABEL org.opencontainers.image.title="forecast-service" \
      org.opencontainers.image.description="Serve sktime forecasters from a versioned model registry over HTTP" \
      org.opencontainers.image.licenses="BSD-3-Clause"

# Declared after every change to /models and /data (later build steps would be discarded).
VOLUME ["/models", "/data"]
WORKDIR /home/forecast
USER 10001:10001
EXPOSE 8000

STOPSIGNAL SIGTERM
# Liveness: the process answers. Generous start period: the first start trains the demo
# models before the server listens. (No curl in slim images: Python's urllib.)
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('FORECAST_PORT', '8000') + '/healthz', timeout=4)"]

# tini as PID 1: forwards SIGTERM to the server (also while it is still training, when
# no handler is installed yet and PID 1 would ignore it) and reaps child processes.
ENTRYPOINT ["tini", "--"]
CMD ["forecast-service", "serve", "--train-missing"]
