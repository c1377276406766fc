# syntax=docker/dockerfile:1
# drm-gateway container: a build stage makes wheels, the final stage installs them only.
#   docker build -t drm-gateway .
#   docker run -v "$PWD/conf:/etc/drm-gateway:ro" -p 8080:8080 -p 9090:9090 drm-gateway
# /etc/drm-gateway/gateway.yaml is the config; the routing rules live in
# /etc/drm-gateway/rules/routing.yaml (`routing.rules_file`). Secrets come from the environment.
# The demo ships in the wheel too (its config, rules and certificate are package data); in a
# container it listens on every address, its internal port where the HEALTHCHECK looks:
#   docker run --rm -p 8080:8080 -p 9090:9090 drm-gateway demo --host 0.0.0.0 --internal-port 9090

FROM python:3.11-slim AS build
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# Metadata first so the dependency wheels are cached until pyproject.toml changes.
COPY pyproject.toml README.md ./
COPY proxy ./proxy
# The project wheel plus every runtime dependency as a wheel: the final stage needs no
# compiler and no index.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim AS final
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# A fixed uid so Kubernetes' runAsNonRoot / runAsUser can check it without a passwd lookup.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin gateway
# Install only from the wheels built above (no index, no build tools); the wheels are
# mounted from the build stage so they do not stay in a layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/drm_gateway-*.whl
# /var/lib/drm-gateway holds the SQLite catalog; owned by the gateway user so a fresh named
# volume mounted there (compose) is writable by the one-shot catalog import.
RUN mkdir -p /etc/drm-gateway/rules /var/lib/drm-gateway \
    && chown 10001:10001 /var/lib/drm-gateway
USER 10001:10001
WORKDIR /tmp
# 8080: players (public); 9090: /healthz /readyz /metrics (internal, never exposed publicly).
EXPOSE 8080 9090
# slim has no curl: ask the internal port with the interpreter that is already there.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["drm-gateway"]
CMD ["serve", "--config", "/etc/drm-gateway/gateway.yaml"]
