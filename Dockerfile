# Runtime image for every role. Build the binary first (cargo build --release),
# then: docker build -t flotilla .
# BASE may name any Debian-compatible image (for example one made locally with
# debootstrap and `docker import`).
ARG BASE=debian:bookworm-slim
FROM ${BASE}
COPY target/release/flotilla /usr/local/bin/flotilla
RUN mkdir -p /data
WORKDIR /data
EXPOSE 5432 50050
ENTRYPOINT ["/usr/local/bin/flotilla"]
CMD ["standalone", "--pg-listen", "0.0.0.0:5432", "--data-dir", "/data"]
