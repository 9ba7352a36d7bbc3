"""deploy/healthcheck.py, the containers' health check (compose healthchecks,
and Kubernetes exec probes where the services serve TLS), against real gRPC
servers with the shared bootstrap: plaintext, TLS verified against the
service's name, mTLS with the pod's own certificate, and a server that is gone."""

from __future__ import annotations

import asyncio
import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from idlegrid.common import server
from idlegrid.common.config import Config

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "healthcheck.py"


async def run_check(service: str, env: dict[str, str]) -> tuple[int, str]:
    """Runs the health check as the container does: a separate process whose
    settings come from the environment."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("IDLEGRID_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), service, env={**base, "PYTHONPATH": str(ROOT), **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    return proc.returncode, out.decode()


async def start_health_server(env: dict[str, str]) -> server.RunningServer:
    return await server.start("probe-target", [], config=Config.from_env(env), port=0, guard=None)


async def test_a_serving_grpc_service_is_healthy_and_a_stopped_one_is_not():
    running = await start_health_server({})
    env = {"IDLEGRID_LEDGER_PORT": str(running.port)}
    try:
        assert await run_check("ledger", env) == (0, "")
    finally:
        await running.stop(0)
    code, out = await run_check("ledger", env)
    assert code == 1 and "ledger: unhealthy" in out


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> Path:
    """A CA and a server certificate for the name idlegrid-ledger, as a
    cluster's certificate issuer would make them."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: it makes the test certificates")
    d = tmp_path_factory.mktemp("tls")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=idlegrid-ledger",
             "-keyout", "tls.key", "-out", "tls.csr", cwd=d)
    (d / "san.ext").write_text("subjectAltName=DNS:idlegrid-ledger\n")
    _openssl("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "1", "-extfile", "san.ext", "-out", "tls.crt", cwd=d)
    return d


async def test_a_tls_service_is_checked_over_tls_against_its_name(certificates: Path):
    tls = {"IDLEGRID_TLS_CERT": str(certificates / "tls.crt"), "IDLEGRID_TLS_KEY": str(certificates / "tls.key"),
           "IDLEGRID_TLS_CA": str(certificates / "ca.crt")}
    running = await start_health_server(tls)
    port = str(running.port)
    try:
        ok = await run_check("ledger", {**tls, "IDLEGRID_LEDGER_PORT": port,
                                        "IDLEGRID_LEDGER_ADDR": f"idlegrid-ledger:{port}"})
        assert ok == (0, "")
        code, out = await run_check("ledger", {**tls, "IDLEGRID_LEDGER_PORT": port,
                                               "IDLEGRID_LEDGER_ADDR": f"somebody-else:{port}"})
        assert code == 1 and "Hostname Verification" in out, "a certificate for another name must not pass"
        plain = {"IDLEGRID_LEDGER_PORT": port}
        code, _ = await run_check("ledger", plain)
        assert code == 1, "plaintext cannot talk to a TLS server: why the kubelet's gRPC probe cannot either"
    finally:
        await running.stop(0)


async def test_under_mtls_the_check_shows_the_pods_own_certificate(certificates: Path):
    """Production servers (IDLEGRID_AUTH=mtls) refuse a client without a
    certificate of the cluster's CA: the probe presents the pod's own."""
    tls = {"IDLEGRID_TLS_CERT": str(certificates / "tls.crt"), "IDLEGRID_TLS_KEY": str(certificates / "tls.key"),
           "IDLEGRID_TLS_CA": str(certificates / "ca.crt")}
    running = await start_health_server({**tls, "IDLEGRID_AUTH": "mtls"})
    port = str(running.port)
    addr = {"IDLEGRID_LEDGER_PORT": port, "IDLEGRID_LEDGER_ADDR": f"idlegrid-ledger:{port}"}
    try:
        assert await run_check("ledger", {**tls, **addr, "IDLEGRID_AUTH": "mtls"}) == (0, "")
        code, out = await run_check("ledger", {**tls, **addr})  # TLS without a client certificate
        assert code == 1 and "ledger: unhealthy" in out, "an mTLS server must refuse a client without a certificate"
    finally:
        await running.stop(0)


class _Readyz(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 - the stdlib's name
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(("status", "code"), [(200, 0), (503, 1)])
async def test_the_gateway_is_healthy_when_readyz_says_so(status, code):
    """The gateway's readiness contract: GET /readyz answers 200 when ready."""
    handler = type("Handler", (_Readyz,), {"status": status})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        got, _ = await run_check("gateway", {"IDLEGRID_GATEWAY_PORT": str(httpd.server_address[1])})
        assert got == code
    finally:
        httpd.shutdown()
        httpd.server_close()


async def test_an_unknown_service_is_a_usage_error():
    code, out = await run_check("nonsense", {})
    assert code == 2 and "usage" in out
