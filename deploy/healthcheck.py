"""Health check of one idlegrid service in its container: exits 0 when the
service answers that it is serving, 1 otherwise.

    python /usr/local/lib/idlegrid/healthcheck.py ledger

gRPC services (ledger, registry, scheduler, metering) are asked with the
standard grpc.health.v1 ``Check`` on 127.0.0.1 at their configured port. When
the service serves TLS (IDLEGRID_TLS_CERT set), the check uses TLS too,
verifying the certificate with IDLEGRID_TLS_CA against the host name in the
service's IDLEGRID_<SERVICE>_ADDR, the name the certificate is issued for;
under IDLEGRID_AUTH=mtls it shows the pod's own certificate as its client
certificate, which such a server requires.
The gateway is asked ``GET /readyz`` on its HTTP port.

Compose uses it as the healthcheck of every service. Kubernetes uses it as an
exec probe where the services serve TLS (the production overlay): the
kubelet's built-in gRPC probe only speaks plaintext. Settings come from the
same environment as the service itself, through ``Config.from_env``.
"""

from __future__ import annotations

import sys

from idlegrid.common.config import Config

TIMEOUT_S = 3.0
HTTP_SERVICES = frozenset({"gateway"})


def _host(addr: str) -> str:
    """The host part of a gRPC target: ``dns:///name:port`` or ``name:port``."""
    addr = addr.rsplit("/", 1)[-1]
    host = addr.rsplit(":", 1)[0] if ":" in addr else addr
    return host.strip("[]")


def grpc_serving(config: Config, service: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = f"127.0.0.1:{config.ports[service]}"
    if config.tls_cert is None:
        channel = grpc.insecure_channel(target)
    else:
        roots = config.tls_ca.read_bytes() if config.tls_ca is not None else None
        # Under mTLS the server refuses a client without a certificate of the
        # cluster's CA: show the pod's own (the health service checks no identity).
        mtls = config.auth == "mtls"
        creds = grpc.ssl_channel_credentials(
            root_certificates=roots,
            private_key=config.tls_key.read_bytes() if mtls and config.tls_key else None,
            certificate_chain=config.tls_cert.read_bytes() if mtls else None)
        channel = grpc.secure_channel(
            target, creds,
            options=[("grpc.ssl_target_name_override", _host(config.addrs[service]))])
    with channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                          timeout=TIMEOUT_S)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def http_ready(config: Config, service: str) -> bool:
    import urllib.request

    url = f"http://127.0.0.1:{config.ports[service]}/readyz"
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as reply:  # noqa: S310 - fixed loopback URL
        return reply.status == 200


def main(argv: list[str]) -> int:
    config = Config.from_env()
    if len(argv) != 2 or argv[1] not in config.ports:
        sys.stderr.write(f"usage: healthcheck.py {{{','.join(config.ports)}}}\n")
        return 2
    service = argv[1]
    check = http_ready if service in HTTP_SERVICES else grpc_serving
    try:
        ok = check(config, service)
    except Exception as e:  # any failure to get a SERVING answer is unhealthy
        detail = f"{e.code().name}: {e.details()}" if hasattr(e, "details") else f"{type(e).__name__}: {e}"
        sys.stderr.write(f"{service}: unhealthy: {detail}\n")
        return 1
    if not ok:
        sys.stderr.write(f"{service}: not serving\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
