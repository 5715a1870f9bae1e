# etcdvisor as PID 1 of a container.
#   docker build -t etcdvisor .                          # client only: talks to an external etcd
#   docker build -t etcdvisor --build-arg EMBEDDED=1 .   # plus etcd binaries (etcd.endpoints: embedded)
#   docker run -e ETCDVISOR_ENDPOINTS=http://etcd:2379 -v $PWD/app.yaml:/etc/etcdvisor.yaml:ro etcdvisor
# Built and run by tests/container/ (in CI too: .ci/run starts a local engine with
# ../shared/tools/docker-engine, which also builds the stand-in base image; there
#   docker build --network=host --build-arg PYTHON_IMAGE=local/python:3.11-bookworm -t etcdvisor .
# ); tests/unit/test_container_files.py checks this file's shape without an engine.

ARG PYTHON_IMAGE=python:3.11-slim

# --- 1. dependencies: rebuilt only when pyproject.toml changes, not on every code change ---
FROM ${PYTHON_IMAGE} AS deps
ARG EMBEDDED=0
WORKDIR /build
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + (p['optional-dependencies']['embedded'] if '${EMBEDDED}' == '1' else [])))" \
        > requirements.txt \
 && pip install --no-cache-dir --prefix=/install -r requirements.txt

# --- 2. the package itself (shared by both EMBEDDED variants) -------------------------------
FROM ${PYTHON_IMAGE} AS build
# marks this stage's intermediate images, which tests/container prunes after its builds
LABEL etcdvisor.stage=build
WORKDIR /build
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY src ./src
RUN pip install --no-cache-dir --no-deps --prefix=/install .

# --- 3. the runtime image: everything that does not depend on the code first, the code last --
# (a code change rebuilds only stage 2 and the final COPY: with storage drivers that copy
# every layer in full, such as vfs, each later instruction would cost a few seconds more)
FROM ${PYTHON_IMAGE}
# the user (its group has the same id 10001) and the writable state directory
RUN groupadd --system --gid 10001 etcdvisor \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --create-home etcdvisor \
 && mkdir -p /app/state && chown 10001:10001 /app/state
COPY --from=deps /install /usr/local
COPY examples /app/examples
WORKDIR /app
# Runs as a non-root user. Writable: /app/state (point member.state_dir or etcd.data_dir
# there when using the embedded etcd).
USER 10001:10001
ENV PYTHONUNBUFFERED=1 \
    ETCDVISOR_HTTP=0.0.0.0:9100
EXPOSE 9100
# /healthz (the decision loop turns) and /readyz (joined, lease alive, no role FAILED);
# exit 0/1 with the reason. `supervisor health --live` asks /healthz only.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["supervisor", "health", "--timeout", "4"]
# PID 1 duties, and why no tini: the supervisor is built to be PID 1. It installs its own
# SIGTERM/SIGINT/SIGHUP handlers (PID 1 gets no default signal actions, so an init that
# relies on them would ignore `docker stop`), stops every child's process group with the
# role's stop_signal and SIGKILLs after stop_timeout, and it is a child subreaper that reaps
# every orphan re-parented to it (daemons, grandchildren) without stealing its own
# children's exit statuses. tini would only add a second process in between.
STOPSIGNAL SIGTERM
ENTRYPOINT ["supervisor", "run"]
CMD ["/etc/etcdvisor.yaml"]
# the package (root-owned: the runtime user cannot change the code it runs)
COPY --from=build /install /usr/local
