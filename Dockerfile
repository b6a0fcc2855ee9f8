# fleetd in a container: a build stage makes the wheel, the runtime stage runs it as a non-root user.
# Until `fleetd serve` lands the image validates a mounted manifest:
#   docker run --rm -v "$PWD:/etc/fleetd:ro" fleetd validate /etc/fleetd/fleet.yaml
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fleetd ./fleetd
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.12-slim
RUN useradd --system --create-home --home-dir /var/lib/fleetd fleetd
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER fleetd
ENV FLEETD_STATE_DIR=/var/lib/fleetd
WORKDIR /var/lib/fleetd
ENTRYPOINT ["fleetd"]
CMD ["validate", "/etc/fleetd/fleet.yaml"]
