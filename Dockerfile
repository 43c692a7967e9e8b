# docker build -t mss-relay .
# docker run --stop-timeout 45 -v /etc/mss-relay:/etc/mss-relay:ro -v mss-relay-var:/var/lib/mss-relay \
#   -p 587:10587 mss-relay
# In the configuration: listeners on 0.0.0.0 port 10587 (tls: starttls or implicit),
# state.database and log.file under /var/lib/mss-relay (or log.file: "-" for docker logs).
# Stopping: the relay lets messages past their final dot finish for up to
# timeouts.shutdown (30 s) and Docker kills after 10 s by default: run with
# --stop-timeout 45 (compose: stop_grace_period: 45s), or a message the operator
# took may be cut before its 250 reaches the client, which then sends it again.
# The HEALTHCHECK asks /healthz: it needs the metrics section in the configuration
# (metrics: {host: 127.0.0.1, port: 9464}); another address or port: give it with
# -e MSS_RELAY_HEALTH_URL=http://127.0.0.1:PORT/healthz (without a metrics section,
# run with --no-healthcheck: the container would stay "unhealthy").
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

RUN groupadd --system mss-relay \
    && useradd --system --gid mss-relay --home-dir /var/lib/mss-relay --create-home \
       --shell /usr/sbin/nologin mss-relay

WORKDIR /opt/mss-relay
COPY pyproject.toml README.md ./
COPY mss_relay ./mss_relay
RUN pip install --no-cache-dir . && rm -rf /root/.cache

USER mss-relay
WORKDIR /var/lib/mss-relay
VOLUME ["/var/lib/mss-relay"]
EXPOSE 10587
ENV MSS_RELAY_HEALTH_URL=http://127.0.0.1:9464/healthz
# No curl in the image: Python's urllib; a 503 (or no answer) raises, exit 1.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['MSS_RELAY_HEALTH_URL'], timeout=8)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["mss-relay"]
CMD ["serve", "--config", "/etc/mss-relay/mss-relay.yaml"]
