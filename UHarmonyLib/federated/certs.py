"""Certificates for a trial deployment: a private CA, the SuperLink's certificate, site keys.

Good for 127.0.0.1 trials and tests. A real deployment should take the SuperLink's
certificate from the hospital's own PKI (docs/federated.md); the files and flags are
the same. Private keys are written readable by the owner only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from UHarmonyLib.files.atomic import atomic_path

DAYS = 365


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        if private:
            os.chmod(tmp, 0o600)
    if private:
        os.chmod(path, 0o600)
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "UHarmony trial"),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )


def make_tls(out: Path, hosts: list[str]) -> dict[str, Path]:
    """ca.crt, server.pem and server.key (for `hosts`, IPs or names) in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("UHarmony trial CA"))
        .issuer_name(_name("UHarmony trial CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    alt: list[x509.GeneralName] = []
    for h in hosts:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            alt.append(x509.DNSName(h))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return {
        "ca": _write(out / "ca.crt", ca.public_bytes(pem)),
        "ca_key": _write(out / "ca.key", _key_pem(ca_key), private=True),
        "cert": _write(out / "server.pem", cert.public_bytes(pem)),
        "key": _write(out / "server.key", _key_pem(key), private=True),
    }


def make_site_keys(out: Path, sites: list[str]) -> dict[str, Path]:
    """An EC P-384 key pair per site for SuperNode authentication (OpenSSH format, as Flower reads them).

    The server registers `<site>.pub`; the site keeps `<site>.key` and passes it to its node.
    """
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for site in sites:
        key = ec.generate_private_key(ec.SECP384R1())
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        files[f"{site}.key"] = _write(out / f"{site}.key", private, private=True)
        files[f"{site}.pub"] = _write(out / f"{site}.pub", public + f" {site}\n".encode())
    return files
