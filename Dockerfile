# Builds the wao-lb image: the release binary on a small Debian runtime that carries the nft
# and ip tools `redirect: tproxy` drives. Base images are build arguments, so a mirror or a
# locally imported base works. `BINARY_FROM=prebuilt` takes the host's
# target/release/wao-lb (built with `cargo build --release`) instead of compiling in a
# Rust image, for hosts that cannot pull one:
#   podman build --build-arg RUNTIME_IMAGE=localhost/debian:bookworm-slim \
#                --build-arg BINARY_FROM=prebuilt -t wao-lb .
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim
ARG BINARY_FROM=build

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p wao-lb \
 && install -D target/release/wao-lb /out/wao-lb

FROM ${RUNTIME_IMAGE} AS prebuilt
COPY target/release/wao-lb /out/wao-lb

# The stage the binary comes from (BuildKit and buildah build only the stages used).
FROM ${BINARY_FROM} AS binary

FROM ${RUNTIME_IMAGE}
# Versions come from the base image's Debian release; pinning exact package versions
# breaks the build whenever the archive moves on.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=binary /out/wao-lb /usr/local/bin/wao-lb
COPY config/ /etc/wao-lb/
# Non-root for the container example (bound listeners need no capability). The Kubernetes
# DaemonSet (deploy/daemonset.yaml) runs it as root with only NET_ADMIN and NET_RAW, which
# nftables and IP_TRANSPARENT need.
USER 65532:65532
# The container example's services (config/container.yaml). Its admin API stays on the
# container's loopback (`docker exec <c> wao-lb weights`); it has no authentication.
EXPOSE 18080/tcp 18053/udp
ENTRYPOINT ["/usr/local/bin/wao-lb"]
CMD ["run", "--config", "/etc/wao-lb/container.yaml", "--log-format", "json"]
