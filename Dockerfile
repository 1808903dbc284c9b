# Builds the wao-lb image: a static-enough release binary on Debian slim, with the nft and
# ip tools that `redirect: tproxy` drives.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p wao-lb

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/wao-lb /usr/local/bin/wao-lb
COPY config/ /etc/wao-lb/
USER 65532:65532
# The container example's services (config/container.yaml). Its admin API stays on the
# container's loopback (`docker exec <c> wao-lb weights`); it has no authentication.
EXPOSE 18080/tcp 18053/udp
ENTRYPOINT ["/usr/local/bin/wao-lb"]
CMD ["run", "--config", "/etc/wao-lb/container.yaml", "--log-format", "json"]
