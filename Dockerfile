# syntax=docker/dockerfile:1
# Build stage: install the client and the server into a virtualenv.
FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Dependencies first, in a layer of their own, so that a source edit does not download them again: only
# the metadata is copied, with empty packages standing in for the sources while pip resolves it.
COPY pyproject.toml README.md ./
COPY clients/python/pyproject.toml clients/python/README.md clients/python/
RUN mkdir -p server clients/python/src/chatmem \
    && touch server/__init__.py clients/python/src/chatmem/__init__.py \
    && pip install ./clients/python . \
    && pip uninstall --yes chatmem chatmem-server \
    && rm -rf server clients/python/src build clients/python/build ./*.egg-info
# Then the sources: this layer installs the two packages only.
COPY clients/python/src clients/python/src
COPY server server
RUN pip install --no-deps ./clients/python .

# Runtime stage: the virtualenv only, run as an unprivileged user.
FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/chatmem --create-home chatmem
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GRPC__ADDRESS=0.0.0.0:50051 \
    DATABASE__SQLITE_PATH=/var/lib/chatmem/chatmem.db
USER chatmem
WORKDIR /var/lib/chatmem
EXPOSE 50051 9464
# The probe reads the same settings as the server (GRPC__ADDRESS or GRPC__HEALTH_ADDRESS, GRPC__TLS_*,
# GRPC__HEALTH_CHECK_*), so it follows the listener wherever it is configured, with TLS or without.
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD ["chatmem-server", "health", "--timeout", "2"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["chatmem-server"]
CMD ["serve"]
