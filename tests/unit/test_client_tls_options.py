"""The client's certificate options: PEM bytes become channel credentials; contradictory options are refused."""

from __future__ import annotations

import pytest

from chatmem._channel import ChannelSpec
from tests.pki import CertificateAuthority


def test_pem_options_build_credentials_and_keep_the_api_key() -> None:
    ca = CertificateAuthority()
    client = ca.issue("client", server=False)
    tls = ChannelSpec.build("h:1", root_certificates=ca.cert, api_key="k")
    assert tls.credentials is not None and ("authorization", "Bearer k") in tls.metadata
    mtls = ChannelSpec.build("h:1", root_certificates=ca.cert, private_key=client.key, certificate_chain=client.cert)
    assert mtls.credentials is not None
    assert ChannelSpec.build("h:1").credentials is None


def test_half_a_client_key_pair_or_two_kinds_of_credentials_are_refused() -> None:
    ca = CertificateAuthority()
    client = ca.issue("client", server=False)
    with pytest.raises(ValueError, match="together"):
        ChannelSpec.build("h:1", root_certificates=ca.cert, private_key=client.key)
    with pytest.raises(ValueError, match="either"):
        ChannelSpec.build("h:1", credentials=ChannelSpec.build("h:1", tls=True).credentials, root_certificates=ca.cert)
