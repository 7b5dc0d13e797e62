"""The run's PKI: files and modes, names, chains that verify, curl lines."""

from __future__ import annotations

import ipaddress
import stat

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from emulator.pki import create_run_pki, curl_lines, write_readme


def test_ca_server_and_client_certificates(tmp_path) -> None:
    pki = create_run_pki(tmp_path / "kms", ["alice", "bob"], ["sae-a", "sae-b"])
    assert stat.S_IMODE((tmp_path / "kms").stat().st_mode) == 0o700
    ca = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    for issued in [*pki.kmes.values(), *pki.saes.values(), ]:
        assert stat.S_IMODE(issued.key.stat().st_mode) == 0o600
        cert = x509.load_pem_x509_certificate(issued.cert.read_bytes())
        cert.verify_directly_issued_by(ca)
    assert stat.S_IMODE((tmp_path / "kms" / "ca.key").stat().st_mode) == 0o600
    server = x509.load_pem_x509_certificate(pki.kmes["alice"].cert.read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    client = x509.load_pem_x509_certificate(pki.saes["sae-b"].cert.read_bytes())
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "sae-b"
    usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usage
    lines = curl_lines(pki, {"alice": "https://127.0.0.1:1", "bob": "https://127.0.0.1:2"},
                       {"sae-a": "alice", "sae-b": "bob"}, {"sae-a": ["sae-b"]})
    assert any("enc_keys" in line and str(pki.saes["sae-a"].key) in line for line in lines)
    assert any("https://127.0.0.1:2/api/v1/keys/sae-a/dec_keys" in line for line in lines)
    assert "curl --cert" in write_readme(pki, lines).read_text()
