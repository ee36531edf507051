FROM python:3.11-slim

# openssh-client for debugging connectivity from inside the container; the server itself uses asyncssh.
RUN apt-get update && apt-get install -y --no-install-recommends openssh-client procps iproute2 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 infra \
    && install -d -o infra -g infra -m 0700 /home/infra/.local/share/infrastructor

WORKDIR /app
COPY pyproject.toml README.md alembic.ini fastmcp.json ./
COPY mcp_server ./mcp_server
COPY migrations ./migrations
RUN pip install --no-cache-dir .

USER infra
ENV INFRA_DATA_DIR=/home/infra/.local/share/infrastructor \
    INFRA_HTTP_HOST=127.0.0.1 \
    INFRA_HTTP_PORT=8765
VOLUME ["/home/infra/.local/share/infrastructor"]
EXPOSE 8765
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('INFRA_HTTP_PORT', '8765'), timeout=4)"
CMD ["infrastructor", "serve"]
