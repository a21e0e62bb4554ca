# syntax=docker/dockerfile:1

# transitca: the ca binary on distroless, as uid 65532, with a read-only
# root file system. The only writable path it needs is the data directory
# /var/lib/transitca (the issuance log and root-cert.pem): mount a volume
# there. Build with "make image" (it passes VERSION and COMMIT).

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG COMMIT=unknown
# The build flags live in scripts/build-release.sh (cmd/ca TestReleaseBuild
# builds with the same script).
RUN VERSION="${VERSION}" COMMIT="${COMMIT}" ./scripts/build-release.sh /out/ca \
 && mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ca /usr/local/bin/ca
COPY --from=build --chown=65532:65532 --chmod=0700 /out/data /var/lib/transitca
USER 65532:65532
VOLUME ["/var/lib/transitca"]
# 15012 IstioCertificateService (gRPC/TLS), 15014 /metrics and /healthz.
# The admin API (15015) listens on loopback unless admin.listen says otherwise.
EXPOSE 15012 15014
ENTRYPOINT ["/usr/local/bin/ca"]
CMD ["serve", "--config", "/etc/transitca/config.yaml"]
