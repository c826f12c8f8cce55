# syntax=docker/dockerfile:1
# Build stage: install the client and the server into a virtualenv.
FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY clients/python clients/python
COPY pyproject.toml README.md ./
COPY server server
RUN pip install --no-cache-dir ./clients/python .

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
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD ["python", "-c", "import grpc, sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; c = grpc.insecure_channel('127.0.0.1:50051'); r = g.HealthStub(c).Check(h.HealthCheckRequest(), timeout=2); sys.exit(r.status != h.HealthCheckResponse.SERVING)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["chatmem-server"]
CMD ["serve"]
