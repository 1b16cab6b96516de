# An application image whose entrypoint is the launcher: the workload reads its secrets from
# os.environ (and *_FILE paths), resolved by `secretfs run` before it starts.
#
#   docker build -t secretfs:0.1.0 .                                   # the secretfs image
#   docker build -f examples/app.Dockerfile -t secretfs-app:0.1.0 examples
#
# The job spec names the secrets and the source: /app/secretfs.toml, the launcher's default in
# the working directory (SECRETFS_SPEC names another). Without a command, the spec's runs.
FROM secretfs:0.1.0 AS secretfs

FROM python:3.12.8-slim-bookworm
COPY --from=secretfs /usr/local/bin/secretfs /usr/local/bin/secretfs
RUN useradd --no-log-init --uid 10001 --user-group --no-create-home --home-dir /app \
        --shell /usr/sbin/nologin app \
    && install -d -o 10001 -g 10001 -m 0750 /app
COPY --chown=10001:10001 workload.py /app/workload.py
COPY --chown=10001:10001 container-job.toml /app/secretfs.toml
WORKDIR /app
USER 10001:10001
ENTRYPOINT ["secretfs", "run"]
