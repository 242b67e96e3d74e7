# segment-worker: a slim, non-root image of the worker (with the RocksDB local state option).
#   docker build -t segment-worker .
#   docker run --rm -e SEGMENT_WORKER_BROKER=kafka://kafka:9092 -p 6066:6066 segment-worker
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[rocksdb]'

FROM python:3.11-slim
RUN useradd --system --uid 10001 --create-home --home-dir /app segment
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels 'segment-worker[rocksdb]' && rm -rf /wheels
USER 10001
WORKDIR /app
ENV SEGMENT_WORKER_DATA_DIR=/app/data \
    SEGMENT_WORKER_WEB_HOST=0.0.0.0 \
    SEGMENT_WORKER_STATE_STORE=rocksdb \
    PYTHONUNBUFFERED=1
RUN mkdir -p /app/data
VOLUME ["/app/data"]
EXPOSE 6066
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:6066/readyz', timeout=2)"
ENTRYPOINT ["segment-worker"]
CMD ["run"]
