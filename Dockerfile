# syntax=docker/dockerfile:1
# The media object proxy as a container image.
#   builder: build the project's wheel and install it, with its runtime dependencies, into /opt/venv
#   runtime: python:3.11-slim-bookworm plus /opt/venv only; no compiler, no pip, no test extras
# Configure at run time with PROXY_* variables (README); credentials only from the AWS chain.

FROM python:3.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy

RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip wheel --no-deps --wheel-dir /tmp/wheels . \
    && /opt/venv/bin/pip install /tmp/wheels/media_object_proxy-*.whl \
    && /opt/venv/bin/python -c "import uvloop, httptools, proxy.app" \
    && /opt/venv/bin/pip uninstall --yes pip setuptools


FROM python:3.11-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="media-object-proxy" \
      org.opencontainers.image.description="Streams S3 or local objects with HTTP Range support"

# Listen on every interface inside the container; uvloop and httptools are dependencies
# of the proxy and are required explicitly here (PROXY_LOOP, PROXY_HTTP).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PROXY_HOST=0.0.0.0 \
    PROXY_PORT=8000 \
    PROXY_WORKERS=1 \
    PROXY_LOOP=uvloop \
    PROXY_HTTP=httptools

RUN groupadd --system --gid 10001 proxy \
    && useradd --system --uid 10001 --gid proxy --create-home --home-dir /home/proxy \
       --shell /usr/sbin/nologin proxy

COPY --from=builder /opt/venv /opt/venv

USER 10001:10001
WORKDIR /home/proxy
EXPOSE 8000

# With writes on, S3 upload parts are spooled here (PROXY_UPLOAD_SPOOL_DIR): a volume, so that a
# read-only root filesystem (the ECS task) still has a place the proxy user may write.
RUN mkdir /home/proxy/spool
VOLUME ["/home/proxy/spool"]

# No curl in slim images: the standard library asks /healthz.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PROXY_PORT', '8000'), timeout=4)"]

# Exec form: python (uvicorn) is PID 1 and gets SIGTERM itself; it stops accepting connections,
# lets running responses finish (timeout_graceful_shutdown) and stops its workers.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "proxy"]
