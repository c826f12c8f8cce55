"""The ``chatmem`` command: its parser, and the one place that turns failures into a line and an exit code."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from chatmem.cli import _prefs, _tail, _threads, _transfer
from chatmem.cli._common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    CliError,
    add_connect_options,
    describe,
    fail,
    target_of,
)
from chatmem.errors import ChatmemError

EPILOG = """\
environment: CHATMEM_TARGET, CHATMEM_WORKSPACE, CHATMEM_API_KEY (the credential: an API key or a token,
sent as a bearer token), CHATMEM_CA_FILE, CHATMEM_CERT_FILE, CHATMEM_KEY_FILE.
exit codes: 0 ok, 1 other error, 2 usage, 3 not found, 4 invalid argument or input,
5 unavailable or deadline exceeded, 6 not authenticated or not permitted, 7 conflict, 130 interrupted."""


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of ``chatmem threads ...`` and ``chatmem prefs ...``."""
    common = argparse.ArgumentParser(add_help=False)
    add_connect_options(common)
    parser = argparse.ArgumentParser(
        prog="chatmem",
        parents=[common],
        description="Look at, export, import, watch and reshape chatmem threads, and manage preferences.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    groups = parser.add_subparsers(dest="group", required=True, metavar="{threads,prefs}")
    threads = groups.add_parser("threads", parents=[common], help="threads and their messages")
    commands = threads.add_subparsers(dest="command", required=True)
    _threads.add_parsers(commands, common)
    _transfer.add_parsers(commands, common)
    _tail.add_parsers(commands, common)
    prefs = groups.add_parser("prefs", parents=[common], help="a user's preferences")
    _prefs.add_parsers(prefs.add_subparsers(dest="command", required=True), common)
    return parser


def _quiet_stdout() -> None:
    # The reader went away (`| head`): point stdout at /dev/null so the interpreter's final flush is silent.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``chatmem`` command.

    Args:
        argv: the arguments after the program name; None reads ``sys.argv``.

    Returns:
        The exit code: 0 ok, 1 other error, 2 usage, 3 not found, 4 invalid argument or input,
        5 unavailable or deadline exceeded, 6 not authenticated or not permitted, 7 conflict,
        130 interrupted.
    """
    args = build_parser().parse_args(argv)
    try:
        code: int = asyncio.run(args.run(args))
    except CliError as exc:
        fail(str(exc))
        return exc.code
    except ChatmemError as exc:
        message, code = describe(exc, target_of(args))
        fail(message)
        return code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_ERROR
    except Exception as exc:  # the promise is one line on stderr, never a traceback
        if os.environ.get("CHATMEM_DEBUG"):
            raise
        fail(f"unexpected {type(exc).__name__}: {exc} (set CHATMEM_DEBUG=1 for the traceback)")
        return EXIT_ERROR
    return code
