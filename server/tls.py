"""TLS for the gRPC listener: certificates (and the client CA for mTLS) reloaded from disk when the files change.

gRPC asks ``CertificateReloader.fetch`` before each new handshake; it answers None (keep the current
certificates) unless a file's modification time, size or inode changed. A half-written replacement
(unreadable, or a key that does not match the certificate) is logged and skipped, so the server keeps
serving the previous certificates until the new files are complete.
"""

from __future__ import annotations

import logging
import os
import pathlib
import threading

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key

log = logging.getLogger(__name__)

_Stamp = tuple[tuple[int, int, int], ...]


def _public_der(cert_pem: bytes, key_pem: bytes) -> tuple[bytes, bytes]:
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = load_pem_private_key(key_pem, password=None)
    fmt = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*fmt), key.public_key().public_bytes(*fmt)


class CertificateReloader:
    """Serve a certificate and key (and optionally verify clients against a CA), reloading on change.

    Args:
        cert_file: PEM certificate chain, leaf first.
        key_file: PEM private key (unencrypted).
        client_ca_file: PEM CA bundle for client certificates, or None.
        require_client_auth: refuse clients without a certificate that chains to ``client_ca_file``.
    """

    def __init__(
        self, cert_file: str, key_file: str, client_ca_file: str | None = None, *, require_client_auth: bool = False
    ) -> None:
        self._files = [cert_file, key_file, *([client_ca_file] if client_ca_file else [])]
        self._require_client_auth = require_client_auth
        self._stamp: _Stamp | None = None
        self._bad: _Stamp | None = None  # files that failed to load: warn once, not on every handshake
        self._lock = threading.Lock()  # gRPC may call fetch from its own threads
        self.loads = 0

    def _stamp_now(self) -> _Stamp:
        found = []
        for name in self._files:
            st = os.stat(name)
            found.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(found)

    def _load(self) -> grpc.ServerCertificateConfiguration:
        cert, key, *ca = (pathlib.Path(f).read_bytes() for f in self._files)
        cert_pub, key_pub = _public_der(cert, key)
        if cert_pub != key_pub:
            raise ValueError("the private key does not match the certificate")
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca[0] if ca else None)

    def credentials(self) -> grpc.ServerCredentials:
        """Load the files now (raising if they are unusable) and return reloading server credentials."""
        with self._lock:
            stamp = self._stamp_now()
            initial = self._load()
            self._stamp, self.loads = stamp, 1
        return grpc.dynamic_ssl_server_credentials(
            initial, self.fetch, require_client_authentication=self._require_client_auth
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Return new certificates if the files changed since the last load, else None (keep the current ones)."""
        with self._lock:
            try:
                stamp = self._stamp_now()
            except OSError as exc:  # a file is being replaced right now
                log.debug("TLS files not all present (%s); keeping the current certificates", exc)
                return None
            if stamp in (self._stamp, self._bad):
                return None
            try:
                config = self._load()
            except Exception as exc:  # noqa: BLE001 - any unusable file (encrypted key, unknown type): keep the old
                self._bad = stamp
                log.warning("TLS files changed but cannot be loaded (%s); keeping the current certificates", exc)
                return None
            self._stamp = stamp
            self.loads += 1
        log.info("TLS certificates reloaded from %s", ", ".join(self._files))
        return config
