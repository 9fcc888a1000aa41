# syntax=docker/dockerfile:1
# One image for every role: `makima operator`, `makima daemon`, `makima task run`
# (inside Job pods) and `makima db migrate`. Build: docker build -t makima:dev .

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# ---- builder: build the wheel and install it with its dependencies into a venv ----
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ ./operator/
RUN pip wheel --no-deps --wheel-dir /dist . \
 && python -m venv /opt/makima \
 && /opt/makima/bin/pip install /dist/*.whl \
 && /opt/makima/bin/pip uninstall -y pip \
 && find /opt/makima -name '__pycache__' -type d -prune -exec rm -rf {} +

# ---- final: runtime only (python, git, CA certificates), non-root ----
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="makima" \
      org.opencontainers.image.description="Kubernetes operator that turns a written goal into a pull request" \
      org.opencontainers.image.source="https://github.com/makima-dev/makima" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"

# git: the task runner clones, merges and pushes. Nothing else is installed.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# Fixed numeric UID/GID so Kubernetes can verify runAsNonRoot without a name lookup.
RUN groupadd --system --gid 10001 makima \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/makima --create-home \
            --shell /usr/sbin/nologin makima

COPY --from=builder /opt/makima /opt/makima
# HOME=/tmp: pods run with a read-only root filesystem and an emptyDir on /tmp, and git
# writes under $HOME (global config, credential helpers).
ENV PATH=/opt/makima/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp

USER 10001:10001
WORKDIR /home/makima
EXPOSE 8080
# No HEALTHCHECK: Kubernetes probes /healthz and /readyz instead.
ENTRYPOINT ["makima"]
CMD ["--help"]
