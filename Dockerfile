# docker build -t mss-relay .
# docker run -v /etc/mss-relay:/etc/mss-relay:ro -v mss-relay-var:/var/lib/mss-relay \
#   -p 587:10587 mss-relay
# In the configuration: listeners on 0.0.0.0 port 10587 (tls: starttls or implicit),
# state.database and log.file under /var/lib/mss-relay (or log.file: "-" for docker logs).
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
STOPSIGNAL SIGTERM
ENTRYPOINT ["mss-relay"]
CMD ["serve", "--config", "/etc/mss-relay/mss-relay.yaml"]
