# drainscaler: a static binary on an empty image.
#   docker build -t drainscaler/drainscaler:dev .
# Not built on the development machine (no container engine there). scripts/image-check runs
# the same static musl binary from a root laid out like the final stage, as user 65532, against
# the local control plane; and `cargo build --release --locked --bin drainscaler` succeeds in a
# directory holding only what the build stage copies (the manifest names the benches).
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
