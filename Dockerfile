# One image for the API and the worker (different commands). CPU PyTorch by default.
#   docker build -t rapid-adapt .                                   # python:3.11-slim-bookworm, CPU torch
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 -t rapid-adapt:cuda .
# BASE_IMAGE must provide python3 (3.10+) with venv; the compose smoke test passes a local
# Debian image built with debootstrap (scripts/compose_smoke.sh) and a local torch wheel in wheels/.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# a CA bundle for pip where TLS is intercepted (the smoke test passes the host's)
ARG PIP_CERT=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/venv
COPY wheels/ /wheels/
# every dependency at the version CI tested, each file checked against its hash (scripts/lock.sh); torch's own
# CPU dependencies are among them
COPY requirements/serving.lock /src/requirements/
RUN /opt/venv/bin/pip install ${PIP_CERT:+--cert "$PIP_CERT"} --require-hashes --no-deps -r /src/requirements/serving.lock
# torch by version: the local CPU wheel, or the index's build (a CUDA build brings its nvidia-* packages)
RUN if ls /wheels/torch-*.whl >/dev/null 2>&1; then \
      /opt/venv/bin/pip install ${PIP_CERT:+--cert "$PIP_CERT"} --no-deps --find-links /wheels "torch==${TORCH_VERSION}"; \
    else \
      /opt/venv/bin/pip install ${PIP_CERT:+--cert "$PIP_CERT"} --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"; \
    fi
COPY pyproject.toml README.md /src/
COPY models/ /src/models/
COPY app/ /src/app/
COPY worker/ /src/worker/
RUN /opt/venv/bin/pip install ${PIP_CERT:+--cert "$PIP_CERT"} --no-deps /src

FROM ${BASE_IMAGE}
RUN (getent group app || groupadd --system app) && (id app || useradd --system --gid app --home-dir /srv app)
COPY --from=build /opt/venv /opt/venv
WORKDIR /srv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 RAPID_ADAPT_CACHE=/tmp/rapid-adapt-cache
USER app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD python3 -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=2)" || exit 1
CMD ["sh", "-c", "exec python -m app.serve --host ${HOST:-0.0.0.0} --port ${PORT:-8000} --timeout-graceful-shutdown 20"]
