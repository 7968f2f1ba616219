# The rating agent as a container. Redis and PostgreSQL run elsewhere: point RATING_REDIS_URL and
# RATING_DATABASE_URL at them. The container listens on all its addresses, so the agent requires
# RATING_MANAGEMENT_TOKEN (the management API's bearer token) and RATING_AGENT_NETWORKS (Kamailio's
# addresses) or RATING_AGENT_TOKEN (a bearer token Kamailio sends) for the /v1 endpoints.
# The GraphQL explorer's assets: the npm packages pinned in its package-lock.json, bundled by esbuild
# (devstack/install.sh does the same outside a container). Only the bundle reaches the image.
FROM node:20-slim AS explorer
WORKDIR /explorer
COPY agent/graphql/explorer/package.json agent/graphql/explorer/package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY agent/graphql/explorer/src ./src
RUN npm run build

# The package as a wheel, its C extension (agent/pricing/_route.c) compiled here: the image itself has no
# compiler.
FROM python:3.11-slim AS wheel
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY agent ./agent
COPY --from=explorer /explorer/static ./agent/graphql/explorer/static
COPY cache ./cache
COPY devstack ./devstack
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    RATING_HOST=0.0.0.0 RATING_PORT=8080 RATING_DECK_DIR=/var/lib/rating-agent/decks

WORKDIR /app
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-cache-dir /tmp/wheels/*.whl && rm -rf /tmp/wheels \
    && python -c "import agent.pricing._route" \
    && useradd --system --no-create-home rating \
    && mkdir -p /var/lib/rating-agent/decks && chown rating /var/lib/rating-agent/decks
COPY demo ./demo

# Built decks (rebuilt from PostgreSQL when missing); a volume keeps them across restarts.
VOLUME /var/lib/rating-agent/decks
USER rating
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=2s CMD python -c "import urllib.request,os; urllib.request.urlopen('http://127.0.0.1:%s/ready' % os.environ['RATING_PORT'])"
ENTRYPOINT ["rating-agent"]
CMD ["serve"]
