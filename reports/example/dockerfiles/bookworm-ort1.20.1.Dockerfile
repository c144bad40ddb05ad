# Rendered by envmatrix 0.1.0 for environment bookworm-ort1.20.1; edit the template, not this file.
ARG BASE_IMAGE=debian:bookworm

# Stage "runtime": the base with its Python interpreter and the image's own user.
FROM ${BASE_IMAGE} AS runtime
# Python from the distribution (debian; CUDA bases are Ubuntu underneath and take this path).
# python3-venv brings ensurepip, so the venv gets its own pip; the system pip is never used.
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
# The image's own non-root user, uid 1000. Benchmark runs use uid 65534 (nobody) with HOME=/tmp.
# Some bases (Ubuntu 23.04+) already own uid 1000 as "ubuntu": that user gives way.
RUN if getent passwd 1000 >/dev/null; then userdel "$(getent passwd 1000 | cut -d: -f1)"; fi \
 && useradd --uid 1000 --create-home --shell /bin/sh envmatrix

# Stage "builder" (thrown away): creates the venv. Only this stage sees the CA bundle, the
# wheelhouse and the index URL, so none of them reaches the final image's layers or history.
FROM runtime AS builder
ARG DEBIAN_FRONTEND=noninteractive
# Labelled so `envmatrix clean` also removes this stage's cached image (it holds the CA bundle).
LABEL envmatrix.managed="true" envmatrix.stage="builder"
ARG PYTHON_BIN=python3
# Optional pip index override, passed by envmatrix as a build arg (never written here).
ARG ENVMATRIX_PIP_INDEX_URL
COPY build/ /tmp/envmatrix-build/
# Old distribution pips (bullseye: 20.3) cannot install some wheels: upgrade pip in the venv first.
# With a lock (build/locked-requirements.txt, written from the matrix's lock file) the exact set
# is installed without the resolver (--no-deps; hashes when the lock has one for every entry),
# else the pins of requirements.txt are resolved. pip's install reports (pip >= 22.2) are
# reduced to name, version and sha256 in the venv; the reports themselves stay here.
RUN set -e; \
    B=/tmp/envmatrix-build; \
    if [ -s "$B/ca.pem" ]; then export PIP_CERT="$B/ca.pem" SSL_CERT_FILE="$B/ca.pem"; fi; \
    if [ -n "${ENVMATRIX_PIP_INDEX_URL:-}" ]; then export PIP_INDEX_URL="$ENVMATRIX_PIP_INDEX_URL"; fi; \
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1; \
    "$PYTHON_BIN" -m venv /opt/venv; \
    pip_install() { \
        report="$1"; shift; \
        if /opt/venv/bin/python -m pip install --help | grep -- '--report' >/dev/null; then set -- --report "$report" "$@"; fi; \
        /opt/venv/bin/python -m pip install --find-links "$B/wheelhouse" "$@"; \
    }; \
    pip_install "$B/report-pip.json" --upgrade pip; \
    if [ -s "$B/locked-requirements.txt" ]; then \
        pip_install "$B/report-packages.json" --no-deps -r "$B/locked-requirements.txt"; \
    else \
        pip_install "$B/report-packages.json" -r "$B/requirements.txt"; \
    fi; \
    /opt/venv/bin/python "$B/pip_hashes.py" "$B"/report-*.json > /opt/venv/envmatrix-pip-hashes.json

# Final stage: the runtime stage plus the finished venv and the harness.
FROM runtime
COPY --from=builder /opt/venv /opt/venv
COPY harness/ /opt/envmatrix/harness/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/envmatrix \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ENVMATRIX_ENVIRONMENT="bookworm-ort1.20.1" \
    ENVMATRIX_BASE_IMAGE="debian:bookworm"
WORKDIR /opt/envmatrix
USER envmatrix
CMD ["/opt/venv/bin/python", "-m", "harness", "--help"]
