"""The PKI of a run: a CA, a server certificate per KME, a client certificate per SAE.

Written to ``<run>/kms/`` (private keys 0600): ``ca.pem``, ``<node>-kme.pem``/``.key`` (SAN
127.0.0.1 and localhost), ``<sae>.pem``/``.key`` (the SAE id is the certificate's CN, as the
KME reads it) and ``README.txt`` with a curl command line per SAE. EC P-256 keys, SHA-256,
valid for a day: a run's CA is thrown away with the run.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from emulator.apps import kind_of
from emulator.child_config import NodeKms
from emulator.scenario import Scenario

VALID_FOR = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


@dataclass
class RunPki:
    """Where the run's CA and every certificate are."""

    directory: Path
    ca: Path
    kmes: dict[str, Issued] = field(default_factory=dict)  # node -> server cert
    saes: dict[str, Issued] = field(default_factory=dict)  # SAE id -> client cert
    cas: dict[str, Path] = field(default_factory=dict)  # node -> the CA of its operator


def _name(common_name: str, organisation: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


class Authority:
    """A CA that issues server and client certificates."""

    def __init__(self, organisation: str) -> None:
        self.organisation = organisation
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        name = _name(f"{organisation} CA", organisation)
        self.cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALID_FOR)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256()))

    def issue(self, common_name: str, *, server: bool) -> tuple[ec.EllipticCurvePrivateKey,
                                                                 x509.Certificate]:
        """A certificate for a KME (``server``: SAN 127.0.0.1, localhost) or an SAE (client)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder().subject_name(_name(common_name, self.organisation))
            .issuer_name(self.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALID_FOR)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
        return key, builder.sign(self.key, hashes.SHA256())

    def write(self, directory: Path, stem: str, common_name: str, *, server: bool) -> Issued:
        key, cert = self.issue(common_name, server=server)
        issued = Issued(directory / f"{stem}.pem", directory / f"{stem}.key")
        _write_cert(issued.cert, cert)
        _write_key(issued.key, key)
        return issued


def create_run_pki(directory: Path, kme_nodes: list[str], saes: list[str],
                   organisation: str = "qnet run", domains: dict[str, str] | None = None,
                   sae_nodes: dict[str, str] | None = None) -> RunPki:
    """Create the CA and every certificate of a run under ``directory`` (mode 0700).

    With ``domains`` (node -> operator, "" for none) each operator gets its own CA
    (``ca-<operator>.pem``; ``ca.pem`` for nodes without one) that issues its nodes' KME
    certificates and its SAEs' (``sae_nodes``: SAE -> node); ``pki.ca`` is the first CA."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    domains, sae_nodes = domains or {}, sae_nodes or {}
    authorities: dict[str, tuple[Authority, Path]] = {}
    for domain in dict.fromkeys([domains.get(node, "") for node in kme_nodes] or [""]):
        stem = f"ca-{domain}" if domain else "ca"
        authority = Authority(domain or organisation)
        _write_cert(directory / f"{stem}.pem", authority.cert)
        _write_key(directory / f"{stem}.key", authority.key)
        authorities[domain] = (authority, directory / f"{stem}.pem")
    first = next(iter(authorities.values()))[1]
    pki = RunPki(directory, first)
    for node in kme_nodes:
        authority, pki.cas[node] = authorities[domains.get(node, "")]
        pki.kmes[node] = authority.write(directory, f"{node}-kme", f"{node}-kme", server=True)
    for sae in saes:
        authority, _ = authorities[domains.get(sae_nodes.get(sae, ""), "")]
        pki.saes[sae] = authority.write(directory, sae, sae, server=False)
    return pki


def curl_lines(pki: RunPki, kme_urls: dict[str, str], sae_nodes: dict[str, str],
               partners: dict[str, list[str]]) -> list[str]:
    """For each SAE: a status and an enc_keys call at its own KME towards each partner SAE,
    and the dec_keys call the partner makes with the ids it was sent."""
    lines = []
    for sae, issued in pki.saes.items():
        url = kme_urls[sae_nodes[sae]]
        tls = (f"--cert {issued.cert} --key {issued.key} "
               f"--cacert {pki.cas.get(sae_nodes[sae], pki.ca)}")
        for partner in partners.get(sae, []):
            lines.append(f"# {sae} (at {sae_nodes[sae]}) with {partner} "
                         f"(at {sae_nodes[partner]})")
            lines.append(f"curl {tls} {url}/api/v1/keys/{partner}/status")
            lines.append(f"curl {tls} '{url}/api/v1/keys/{partner}/enc_keys?number=1&size=256'")
            other = pki.saes[partner]
            lines.append(f"curl --cert {other.cert} --key {other.key} "
                         f"--cacert {pki.cas.get(sae_nodes[partner], pki.ca)} "
                         f"'{kme_urls[sae_nodes[partner]]}/api/v1/keys/{sae}/dec_keys"
                         f"?key_ID=<key_ID from the enc_keys answer>'")
    return lines


def write_readme(pki: RunPki, lines: list[str]) -> Path:
    path = pki.directory / "README.txt"
    path.write_text("ETSI GS QKD 014 key service of this run (docs/kms.md).\n"
                    "Each SAE's certificate is <sae>.pem/.key, the CA is ca.pem.\n\n"
                    + "\n".join(lines) + "\n")
    return path


@dataclass
class KmsSetup:
    """The key service of a run: the PKI, each node's ``NodeKms``, each KME's URL, the curl
    lines (also in ``kms/README.txt``)."""

    pki: RunPki
    nodes: dict[str, NodeKms]
    urls: dict[str, str]
    saes: dict[str, str]
    lines: list[str]

    def environment(self, sae: str) -> dict[str, str]:
        """What a program acting as SAE ``sae`` needs to reach its KME."""
        issued = self.pki.saes[sae]
        return {"QNET_KME_URL": self.urls[self.saes[sae]], "QNET_SAE_ID": sae,
                "QNET_SAE_CERT": str(issued.cert), "QNET_SAE_KEY": str(issued.key),
                "QNET_CA": str(self.pki.cas.get(self.saes[sae], self.pki.ca))}


def kms_setup(scenario: Scenario, run_dir: Path, free_port: Callable[[], int]) -> KmsSetup | None:
    """The run's PKI and every node's key service config; None when no node declares an SAE.

    Every node runs a KME (relays need key managers too); ports are chosen here so the
    curl lines can be printed before the nodes start and stay valid across a node restart."""
    saes = scenario.saes()
    if not saes:
        return None
    names = [n.name for n in scenario.nodes]
    for stale in (run_dir / "kms").glob("*.keys.sqlite*"):  # a reused --run-dir: fresh keys
        stale.unlink()
    pki = create_run_pki(run_dir / "kms", names, list(saes),
                         domains={n.name: n.domain or "" for n in scenario.nodes},
                         sae_nodes=saes)
    ports = {name: free_port() for name in names}
    urls = {name: f"https://127.0.0.1:{ports[name]}" for name in names}
    nodes = {name: NodeKms(port=ports[name], cert=str(pki.kmes[name].cert),
                           key=str(pki.kmes[name].key), ca=str(pki.cas[name]),
                           database=str(run_dir / "kms" / f"{name}.keys.sqlite"), saes=saes,
                           settings=scenario.kms)
             for name in names}
    keyed = {frozenset(pair) for app in scenario.apps  # pairs an app keys without a link
             for pair in kind_of(app).extra.get("key_pairs", lambda app: [])(app)}
    partners = {sae: [other for other, node in saes.items()
                      if node != saes[sae] and (scenario.link_between(node, saes[sae])
                                                or frozenset((node, saes[sae])) in keyed)]
                for sae in saes}
    lines = curl_lines(pki, urls, saes, partners)
    write_readme(pki, lines)
    return KmsSetup(pki, nodes, urls, saes, lines)
