"""What every CLI command shares: the connect options, the exit codes and the one-line error messages."""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
from typing import Any

import grpc

from chatmem._channel import DEFAULT_TARGET
from chatmem._client import ConnectOptions, MemoryClient
from chatmem.errors import (
    ChatmemError,
    ConflictError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
    UnavailableError,
)

EXIT_OK = 0
"""The command did what it was asked."""
EXIT_ERROR = 1
"""Any other failure (an internal server error, an unreadable file ...)."""
EXIT_USAGE = 2
"""The command line was wrong (argparse's own code)."""
EXIT_NOT_FOUND = 3
"""The thread (or other resource) does not exist."""
EXIT_INVALID = 4
"""The server refused an argument or a message as invalid, or an imported line is not a message."""
EXIT_UNAVAILABLE = 5
"""The server could not be reached, or the call's deadline passed: trying again later may work."""
EXIT_AUTH = 6
"""The credential is missing, wrong, or not allowed to do this."""
EXIT_CONFLICT = 7
"""The thread's state does not allow it (exists already, changed meanwhile, or a bad seq for it)."""
EXIT_INTERRUPTED = 130
"""Interrupted by Ctrl-C (128 + SIGINT, as shells report it)."""

ENV_TARGET = "CHATMEM_TARGET"
ENV_WORKSPACE = "CHATMEM_WORKSPACE"
ENV_API_KEY = "CHATMEM_API_KEY"
ENV_CA_FILE = "CHATMEM_CA_FILE"
ENV_CERT_FILE = "CHATMEM_CERT_FILE"
ENV_KEY_FILE = "CHATMEM_KEY_FILE"


class CliError(Exception):
    """A failure the CLI reports as one line on stderr, with its exit code.

    Args:
        message: what went wrong, without the ``chatmem:`` prefix.
        code: the exit code.
    """

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def add_connect_options(parser: argparse.ArgumentParser) -> None:
    """Add the connect and output options, defaulting to SUPPRESS so they may come before or after the command."""
    group = parser.add_argument_group("connection (the credential comes from $CHATMEM_API_KEY, never from argv)")
    s = argparse.SUPPRESS
    group.add_argument("--target", default=s, help=f"host:port of the server (${ENV_TARGET}, else {DEFAULT_TARGET})")
    group.add_argument("--workspace", default=s, help=f"the workspace (${ENV_WORKSPACE}, else the server's default)")
    group.add_argument("--tls", action="store_true", default=s, help="TLS with the system's root certificates")
    group.add_argument("--ca-file", default=s, help=f"PEM CA that verifies the server; implies TLS (${ENV_CA_FILE})")
    group.add_argument("--cert-file", default=s, help=f"PEM client certificate, for mTLS (${ENV_CERT_FILE})")
    group.add_argument("--key-file", default=s, help=f"PEM key of the client certificate (${ENV_KEY_FILE})")
    group.add_argument("--timeout", type=float, default=s, help="deadline of each call in seconds (10)")
    parser.add_argument("--json", action="store_true", default=s, help="print JSON (one object per line) for scripts")


def option(args: argparse.Namespace, name: str, env: str | None = None, default: Any = None) -> Any:
    """Return an option given on the command line, else its environment variable, else the default."""
    value = getattr(args, name, None)
    if value is None and env is not None:
        value = os.environ.get(env) or None
    return default if value is None else value


def _read_pem(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return pathlib.Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read the {what} {path}: {exc.strerror}") from None


def target_of(args: argparse.Namespace) -> str:
    """Return the server address the command talks to."""
    return str(option(args, "target", ENV_TARGET, DEFAULT_TARGET))


def connect_options(args: argparse.Namespace) -> tuple[str, ConnectOptions]:
    """Resolve the target and the client's connect options from the command line and the environment.

    Raises:
        CliError: an unreadable certificate file, or only half of a client key pair (EXIT_USAGE).
    """
    target = target_of(args)
    cert = _read_pem(option(args, "cert_file", ENV_CERT_FILE), "client certificate")
    key = _read_pem(option(args, "key_file", ENV_KEY_FILE), "client key")
    if (cert is None) != (key is None):
        raise CliError("--cert-file and --key-file go together (a client certificate for mTLS)", EXIT_USAGE)
    opts: ConnectOptions = {
        "tls": bool(option(args, "tls", default=False)),
        "root_certificates": _read_pem(option(args, "ca_file", ENV_CA_FILE), "CA file"),
        "certificate_chain": cert,
        "private_key": key,
        "api_key": os.environ.get(ENV_API_KEY) or None,
        "workspace_id": option(args, "workspace", ENV_WORKSPACE, ""),
    }
    timeout = option(args, "timeout")
    if timeout is not None:
        opts["timeout"] = float(timeout)
    return target, opts


def connect(args: argparse.Namespace) -> Any:
    """Return ``MemoryClient.connect(...)`` for the resolved options (``async with`` it)."""
    target, opts = connect_options(args)
    return MemoryClient.connect(target, **opts)


def wants_json(args: argparse.Namespace) -> bool:
    """Return True when ``--json`` was given before or after the command."""
    return bool(getattr(args, "json", False))


_CODES: tuple[tuple[type[ChatmemError], int], ...] = (
    (NotFoundError, EXIT_NOT_FOUND),
    (InvalidArgumentError, EXIT_INVALID),
    (UnavailableError, EXIT_UNAVAILABLE),
    (DeadlineExceededError, EXIT_UNAVAILABLE),
    (UnauthenticatedError, EXIT_AUTH),
    (PermissionDeniedError, EXIT_AUTH),
    (ConflictError, EXIT_CONFLICT),
    (FailedPreconditionError, EXIT_CONFLICT),
)


def describe(error: ChatmemError, target: str) -> tuple[str, int]:
    """Return the one line that explains a failed call, and the exit code for it."""
    code = next((c for kind, c in _CODES if isinstance(error, kind)), EXIT_ERROR)
    message = error.message
    if isinstance(error, InvalidArgumentError) and error.violations:
        message = "; ".join(f"{v.field}: {v.description}" for v in error.violations)
        return f"invalid argument: {message}", code
    if isinstance(error, UnavailableError):
        return f"cannot reach the server at {target} ({message})", code
    if isinstance(error, DeadlineExceededError):
        return f"no answer from {target} in time ({message}); try again or raise --timeout", code
    if isinstance(error, UnauthenticatedError):
        return f"not authenticated ({message}); set ${ENV_API_KEY}", code
    if isinstance(error, PermissionDeniedError):
        return f"permission denied ({message})", code
    if error.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS):
        return f"server error: {message}", code
    return message, code


def plural(count: int, noun: str) -> str:
    """Return ``1 message`` or ``2 messages``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def fail(message: str) -> None:
    """Print one ``chatmem: ...`` line on stderr."""
    # On a terminal a progress line may be half drawn: clear it, so the error stands on a line of its own.
    clear = "\r\x1b[K" if sys.stderr.isatty() else ""
    print(f"{clear}chatmem: {message}", file=sys.stderr, flush=True)
