# syntax=docker/dockerfile:1
# One image for every role: `makima operator`, `makima daemon`, `makima task run`
# (inside Job pods) and `makima db migrate`. Build: docker build -t makima:dev .
#
# Agent images: the same runtime plus one coding-agent CLI, pinned, from its registry
# (profiles in operator/makima/core/agents.py). Build one with its target, e.g.
#   docker build --target agent-claude -t ghcr.io/makima-dev/makima:0.1.0-agent-claude .
# Targets: agent-claude, agent-codex, agent-gemini, agent-opencode, agent-aider.
# The last stage is the plain runtime, so a build without --target gives the operator image.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm
# Same Debian release as the Python image: its node binary runs on the runtime's libc.
ARG NODE_IMAGE=node:22-bookworm-slim
ARG CLAUDE_CODE_VERSION=2.1.332
ARG CODEX_VERSION=0.171.0
ARG GEMINI_CLI_VERSION=0.61.0
ARG OPENCODE_VERSION=1.18.33
ARG AIDER_VERSION=0.86.2

# ---- builder: build the wheel and install it with its dependencies into a venv ----
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ ./operator/
COPY testing/ ./testing/
# The test doubles (makima-testing: the sandbox, the scripted agent) are built as their own
# wheel and installed only into the `testing` target, never into the operator image.
RUN pip wheel --no-deps --wheel-dir /dist-testing ./testing \
 && pip wheel --no-deps --wheel-dir /dist . \
 && python -m venv /opt/makima \
 && /opt/makima/bin/pip install /dist/*.whl \
 && /opt/makima/bin/pip uninstall -y pip \
 && find /opt/makima -name '__pycache__' -type d -prune -exec rm -rf {} +

# ---- runtime: python, git, CA certificates, makima; non-root ----
FROM ${PYTHON_IMAGE} AS runtime
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

# ---- agent CLIs, installed from their registries in throw-away stages ----
FROM ${NODE_IMAGE} AS node

FROM node AS npm-claude
ARG CLAUDE_CODE_VERSION
RUN npm install --global --prefix /opt/agent --no-audit --no-fund "@anthropic-ai/claude-code@${CLAUDE_CODE_VERSION}"

FROM node AS npm-codex
ARG CODEX_VERSION
RUN npm install --global --prefix /opt/agent --no-audit --no-fund "@openai/codex@${CODEX_VERSION}"

FROM node AS npm-gemini
ARG GEMINI_CLI_VERSION
RUN npm install --global --prefix /opt/agent --no-audit --no-fund "@google/gemini-cli@${GEMINI_CLI_VERSION}"

FROM node AS npm-opencode
ARG OPENCODE_VERSION
RUN npm install --global --prefix /opt/agent --no-audit --no-fund "opencode-ai@${OPENCODE_VERSION}"

# aider-chat in its own venv (its pins must not meet makima's), on the same Python.
FROM ${PYTHON_IMAGE} AS pip-aider
ARG AIDER_VERSION
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/aider \
 && /opt/aider/bin/pip install "aider-chat==${AIDER_VERSION}" \
 && /opt/aider/bin/pip uninstall -y pip

# ---- agent images: the runtime plus one CLI; still USER 10001 (Claude Code's
# skip-permissions flag refuses root, and the pods run as non-root anyway) ----
FROM runtime AS agent-claude
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=npm-claude /opt/agent /opt/agent
ENV PATH=/opt/agent/bin:$PATH DISABLE_AUTOUPDATER=1
USER 10001:10001

FROM runtime AS agent-codex
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=npm-codex /opt/agent /opt/agent
ENV PATH=/opt/agent/bin:$PATH
USER 10001:10001

FROM runtime AS agent-gemini
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=npm-gemini /opt/agent /opt/agent
ENV PATH=/opt/agent/bin:$PATH
USER 10001:10001

FROM runtime AS agent-opencode
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=npm-opencode /opt/agent /opt/agent
ENV PATH=/opt/agent/bin:$PATH
USER 10001:10001

FROM runtime AS agent-aider
COPY --from=pip-aider /opt/aider /opt/aider
# appended: makima's own python stays first on PATH
ENV PATH=$PATH:/opt/aider/bin
USER 10001:10001

# ---- testing: the runtime plus makima-testing (the scripted agent), for the kind e2e
# suite only: docker build --target testing -t makima:e2e . ----
FROM builder AS builder-testing
RUN pip --python /opt/makima/bin/python install --no-deps /dist-testing/*.whl \
 && find /opt/makima -name '__pycache__' -type d -prune -exec rm -rf {} +

FROM runtime AS testing
COPY --from=builder-testing /opt/makima /opt/makima
USER 10001:10001

# ---- the default target: the operator image (runtime, unchanged) ----
FROM runtime AS operator
