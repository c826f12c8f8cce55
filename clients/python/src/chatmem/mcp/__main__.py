"""The chatmem-mcp command: serve the chatmem MCP tools over stdio or streamable HTTP."""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
from collections.abc import Sequence

from chatmem._channel import DEFAULT_TARGET
from chatmem._client import ConnectOptions, MemoryClient
from chatmem.mcp.server import build_server


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; each option falls back to its ``CHATMEM_*`` environment variable."""
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="chatmem-mcp",
        description="Serve a chatmem server's thread memory and preferences as MCP tools. "
        "The credential comes from CHATMEM_API_KEY (never from the command line, where other users can see it).",
    )
    parser.add_argument("--target", default=env.get("CHATMEM_TARGET", DEFAULT_TARGET), help="host:port of chatmem")
    parser.add_argument("--workspace", default=env.get("CHATMEM_WORKSPACE", ""), help="the workspace of every call")
    parser.add_argument("--tls", action="store_true", help="TLS with the system's root certificates")
    parser.add_argument(
        "--ca-file", default=env.get("CHATMEM_CA_FILE"), help="PEM file of the CA of the server's certificate (TLS)"
    )
    parser.add_argument("--transport", choices=["stdio", "streamable-http"], default="stdio")
    parser.add_argument("--host", default="127.0.0.1", help="streamable-http: the address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="streamable-http: the port to listen on")
    return parser.parse_args(argv)


def connect_options(args: argparse.Namespace) -> ConnectOptions:
    """Return the client's connect options from the parsed arguments and the environment."""
    options = ConnectOptions(workspace_id=args.workspace)
    if api_key := os.environ.get("CHATMEM_API_KEY"):
        options["api_key"] = api_key
    if args.ca_file:
        options["root_certificates"] = pathlib.Path(args.ca_file).read_bytes()
    elif args.tls:
        options["tls"] = True
    return options


async def serve(args: argparse.Namespace) -> None:
    """Connect to chatmem and serve the tools until the transport closes."""
    async with MemoryClient.connect(args.target, **connect_options(args)) as client:
        server = build_server(client)
        if args.transport == "stdio":
            await server.run_stdio_async()
        else:
            await server.run_streamable_http_async(host=args.host, port=args.port)


def main(argv: Sequence[str] | None = None) -> None:
    """Run chatmem-mcp."""
    asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    main()
