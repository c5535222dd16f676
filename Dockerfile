# The Velocity worker image (used by docker-compose.yml).
FROM python:3.11-slim
WORKDIR /srv/velocity
COPY pyproject.toml README.md ./
COPY app app
COPY records records
COPY tables tables
COPY agents agents
RUN pip install --no-cache-dir .
ENV APP_DATADIR=/var/lib/velocity \
    WEB_BIND=0.0.0.0 \
    PYTHONUNBUFFERED=1
EXPOSE 6066
CMD ["faust", "-A", "app", "worker", "-l", "info"]
