# etcdvisor as PID 1 of a container. Build: docker build -t etcdvisor .
# Run a fleet member: docker run -e ETCDVISOR_ENDPOINTS=http://etcd:2379 -v $PWD/app.yaml:/etc/etcdvisor.yaml etcdvisor
# (Not built in CI: the CI machine has no Docker engine.)
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY src ./src
COPY examples ./examples
RUN pip install --no-cache-dir '.[embedded]'
# supervisor is PID 1: it forwards SIGTERM to children, reaps orphans and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["supervisor", "run"]
CMD ["/etc/etcdvisor.yaml"]
