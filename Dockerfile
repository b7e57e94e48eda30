# drainscaler: a static binary on an empty image.
#   docker build -t drainscaler/drainscaler:dev .
# Not built with docker on the development machine (no container engine there). On the real
# node, `scripts/cluster drainscaler-image` builds the final stage below from a static musl
# binary without an engine (tests/cluster/cmd/ociimage reads this stage and refuses
# instructions it cannot reproduce, so keep it FROM scratch with COPY, USER, EXPOSE, ENTRYPOINT
# and CMD), and scripts/demo and the real-node tests run it as pods. The build stage itself is
# not run here: the musl binary comes from `scripts/cluster musl-binary`, the same cargo build
# for the same target from the checkout.
FROM rust:1-alpine AS build
RUN apk add --no-cache musl-dev ca-certificates
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
RUN cargo build --release --locked --bin drainscaler \
 && cp target/release/drainscaler /drainscaler

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /drainscaler /drainscaler
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/drainscaler"]
CMD ["run"]
