# Runtime image for every role of the one `flotilla` binary.
#
#   cargo build --release && docker compose up --build
#
# BASE may name any Debian-compatible image with glibc (the default, or one
# made locally: tests/compose/base-image.sh builds one with debootstrap and
# `docker import` on machines that cannot pull). BINARY is the binary's path
# inside the build context.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
ARG BINARY=target/release/flotilla
COPY ${BINARY} /usr/local/bin/flotilla
COPY docker/flotilla.toml /etc/flotilla/flotilla.toml
RUN mkdir -p /data
WORKDIR /data
EXPOSE 5432 50051 50050
ENTRYPOINT ["/usr/local/bin/flotilla"]
CMD ["standalone", "--config", "/etc/flotilla/flotilla.toml", "--pg-listen", "0.0.0.0:5432", "--flight-listen", "0.0.0.0:50051", "--data-dir", "/data"]
