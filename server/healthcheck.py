"""``chatmem-server health``: ask the configured server for its grpc.health.v1 status (a container probe)."""

from __future__ import annotations

import argparse
import pathlib
import sys

import grpc
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.config import GrpcSettings, Settings

SERVING = 0
NOT_SERVING = 1
USAGE = 2

# A listener bound to every interface is dialled on the loopback of the same family.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "[::]": "[::1]", "::": "[::1]"}  # noqa: S104 - mapped away


class UsageError(ValueError):
    """The settings do not say how to reach the server."""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``health`` command."""
    parser = subparsers.add_parser(
        "health",
        help="check the configured server's health (exit 0 SERVING, 1 not, 2 usage error)",
        description="Dial GRPC__HEALTH_ADDRESS (plaintext) if set, else GRPC__ADDRESS (with the GRPC__TLS_* "
        "settings), and print the overall grpc.health.v1 status.",
    )
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer (default 2)")


def dial_address(address: str) -> str:
    """Return the address to dial for a listen address: a wildcard host becomes loopback.

    Raises:
        UsageError: the address has no usable port.
    """
    if address.startswith("unix:"):
        return address
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) == 0:
        raise UsageError(f"cannot dial {address!r}: it names no port")
    return f"{_WILDCARDS.get(host, host)}:{port}"


def _read(name: str, what: str) -> bytes:
    try:
        return pathlib.Path(name).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {name!r}: {exc.strerror}") from exc


def _server_name(g: GrpcSettings) -> str | None:
    """Return the name to verify the server's certificate against when dialling loopback."""
    if g.health_check_server_name:
        return g.health_check_server_name
    if not g.tls_cert_file:
        return None
    try:
        cert = x509.load_pem_x509_certificate(pathlib.Path(g.tls_cert_file).read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return None  # then the dialled host itself must be in the certificate
    dns = names.get_values_for_type(x509.DNSName)
    return dns[0] if dns else None


def open_channel(settings: Settings) -> grpc.Channel:
    """Open a channel to the server's health service as the settings configure it.

    Raises:
        UsageError: an address or a TLS file that cannot be used.
    """
    g = settings.grpc
    if g.health_address:
        return grpc.insecure_channel(dial_address(g.health_address))
    target = dial_address(g.address)
    if not g.tls:
        return grpc.insecure_channel(target)
    ca = _read(g.health_check_ca_file, "GRPC__HEALTH_CHECK_CA_FILE") if g.health_check_ca_file else None
    key = cert = None
    if g.health_check_cert_file and g.health_check_key_file:
        cert = _read(g.health_check_cert_file, "GRPC__HEALTH_CHECK_CERT_FILE")
        key = _read(g.health_check_key_file, "GRPC__HEALTH_CHECK_KEY_FILE")
    name = _server_name(g)
    options = [("grpc.ssl_target_name_override", name)] if name else []
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(ca, key, cert), options=options)


def check(settings: Settings, timeout_s: float) -> int:
    """Print the server's overall status and return the exit code (SERVING 0, anything else 1).

    Raises:
        UsageError: the settings do not say how to reach the server.
    """
    with open_channel(settings) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError as exc:
            print("NOT_SERVING")
            print(f"health check failed: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return NOT_SERVING
    if reply.status == health_pb2.HealthCheckResponse.SERVING:
        print("SERVING")
        return SERVING
    print("NOT_SERVING")
    print(f"status {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}", file=sys.stderr)
    return NOT_SERVING


def run(args: argparse.Namespace) -> int:
    """Run ``chatmem-server health`` with settings from the environment and .env; return the exit code."""
    if not args.timeout > 0:
        print("--timeout must be positive", file=sys.stderr)
        return USAGE
    try:
        return check(Settings(), args.timeout)
    except (UsageError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        print(f"chatmem-server health: {exc}", file=sys.stderr)
        return USAGE
