# The report service (`auditor serve`) with the built-in Fashion-MNIST data.
# The provenance store lives on a volume at /data (see docker-compose.yml).
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AUDITOR_DB=/data/provenance.duckdb

# The built-in training data (Debian package, as in .ci/setup).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# torch pinned to the CPU build first (an unpinned torch pulls a multi-GB CUDA build).
RUN pip install torch==2.13.0
COPY pyproject.toml README.md ./
COPY pspc ./pspc
COPY auditor ./auditor
COPY reports ./reports
COPY migrations ./migrations
# A regular install: migrations, templates, the network checkpoint and the committed study
# are package data, found with importlib.resources; the source folder is removed.
RUN pip install . \
    && cd / && rm -rf /src \
    && useradd --create-home --uid 1000 auditor \
    && mkdir -p /data \
    && chown -R auditor:auditor /data
WORKDIR /data

USER auditor
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/api/health', timeout=4)"

# Create or migrate the store on the volume, then serve on all interfaces of the container.
CMD ["sh", "-c", "auditor db upgrade && exec auditor serve --host 0.0.0.0 --port 8000"]
