# secretfs as a container image: the `secretfs` binary on Debian 12 slim, with fuse3 (for the
# mount sidecar) and CA certificates (for servers behind a public CA).
#
#   docker build -t secretfs:0.1.0 .
#   docker run --rm secretfs:0.1.0          # the launcher's usage
#
# The entrypoint is the launcher, so a container's command is the workload: `docker run IMAGE
# python3 app.py` runs app.py with the secrets the job spec (/app/secretfs.toml, or
# $SECRETFS_SPEC) names. Application images take the binary from this one
# (examples/app.Dockerfile); the mount sidecar runs this one as it is. Expect about 100 MB: the Debian base 75, the stripped binary 13, fuse3
# and CA certificates (with the OpenSSL they depend on) 9.

# ---- build: pinned toolchain, locked dependencies ----------------------------------------------
FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Release profile as in Cargo.toml (LTO, one codegen unit); stripped: symbols are not needed to
# run and a third of the size.
RUN cargo build --release --locked --bin secretfs \
    && strip target/release/secretfs

# ---- runtime: the binary only --------------------------------------------------------------------
FROM debian:12.12-slim AS runtime
# fuse3 provides fusermount3, which mounts and cleans up after the sidecar; versions pinned to
# the bookworm archive (bump them with the base image tag).
RUN apt-get update \
    && apt-get install -y --no-install-recommends fuse3=3.14.0-4 ca-certificates=20250419~deb12u2 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --no-log-init --uid 10001 --user-group --no-create-home --home-dir /app \
        --shell /usr/sbin/nologin secretfs \
    && install -d -o 10001 -g 10001 -m 0750 /app \
    && install -d -m 0755 /run/secrets
COPY --from=build /src/target/release/secretfs /usr/local/bin/secretfs
WORKDIR /app
# Not root by default: the launcher needs no privilege. The mount sidecar runs as root with
# CAP_SYS_ADMIN and /dev/fuse (see examples/docker-compose.yml).
USER 10001:10001
ENTRYPOINT ["secretfs", "run"]
CMD ["--help"]
