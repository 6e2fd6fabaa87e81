# One image for the API and every worker: `bizosaas api`, `bizosaas worker --queue ...`,
# `bizosaas migrate` (the release step). Multi-stage: build tools stay in the first stage.
# syntax=docker/dockerfile:1

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 UV_LINK_MODE=copy
RUN pip install --no-cache-dir 'uv>=0.13'
WORKDIR /app
# Dependencies first (a layer that changes only with the lock), then the code.
COPY pyproject.toml constraints.txt README.md ./
COPY core ./core
COPY workflows ./workflows
COPY activities ./activities
COPY agents ./agents
COPY hitl ./hitl
COPY schedules ./schedules
COPY workers ./workers
COPY api ./api
COPY sandboxes ./sandboxes
COPY mcp-servers.yaml temporal-dev.yaml ./
RUN uv venv /opt/venv \
 && uv pip install --no-cache --python /opt/venv/bin/python -c constraints.txt -e '.[agents]' \
 && /opt/venv/bin/python -m compileall -q /app

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 --user-group biz
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=root:root /app /app
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/biz \
    BIZ_ENVIRONMENT=production \
    BIZ_API_HOST=0.0.0.0
USER biz
EXPOSE 8000
# Liveness without curl in the image: the process answers /health on its port.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s \
  CMD python -c "import os,urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"BIZ_API_PORT\", \"8000\")}/health', timeout=2)" || exit 1
ENTRYPOINT ["bizosaas"]
CMD ["api"]
