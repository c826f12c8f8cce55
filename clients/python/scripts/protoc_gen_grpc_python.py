"""A protoc plugin running grpcio-tools' built-in grpc_python generator, for buf.gen.yaml's local plugins."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tempfile

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2


def main() -> None:
    """Read a CodeGeneratorRequest on stdin and write the CodeGeneratorResponse on stdout.

    grpcio-tools has no stand-alone grpc_python plugin: its generator lives inside its protoc, so the
    request's descriptors are handed to that protoc and its output files are sent back to buf.
    """
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    # proto3 optional fields need nothing from a service generator; declaring it keeps buf from warning.
    response = plugin_pb2.CodeGeneratorResponse(
        supported_features=plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        (root / "set.pb").write_bytes(descriptor_pb2.FileDescriptorSet(file=request.proto_file).SerializeToString())
        (root / "out").mkdir()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"--descriptor_set_in={root / 'set.pb'}",
                f"--grpc_python_out={root / 'out'}",
                *request.file_to_generate,
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            response.error = done.stderr
        else:
            for path in sorted((root / "out").rglob("*.py")):
                response.file.add(name=str(path.relative_to(root / "out")), content=path.read_text())
    sys.stdout.buffer.write(response.SerializeToString())


if __name__ == "__main__":
    main()
