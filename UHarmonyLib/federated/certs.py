"""Certificates for a trial deployment: a private CA, the SuperLink's certificate, site keys.

Good for 127.0.0.1 trials and tests. A real deployment should take the SuperLink's
certificate from the hospital's own PKI (docs/federated.md); the files and flags are
the same. Private keys are written readable by the owner only.

Replacing the CA invalidates every site's copy of ca.crt, so existing files are only
replaced with `overwrite`; every file is generated and staged before any is renamed.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from UHarmonyLib.errors import InputError
from UHarmonyLib.federated.names import check_host, check_name
from UHarmonyLib.files.atomic import umask_mode

DAYS = 365


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


def _tls_files(hosts: list[str]) -> dict[str, tuple[bytes, bool]]:
    """ca.crt, ca.key, server.pem and server.key (for `hosts`, IPs or names): contents and whether private."""
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
        "ca.crt": (ca.public_bytes(pem), False),
        "ca.key": (_key_pem(ca_key), True),
        "server.pem": (cert.public_bytes(pem), False),
        "server.key": (_key_pem(key), True),
    }


def _site_files(site: str) -> dict[str, tuple[bytes, bool]]:
    """An EC P-384 key pair for SuperNode authentication (OpenSSH format, as Flower reads them).

    The server registers `<site>.pub`; the site keeps `<site>.key` and passes it to its node.
    """
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return {f"sites/{site}.key": (private, True), f"sites/{site}.pub": (public + f" {site}\n".encode(), False)}


def make_certs(out: Path, hosts: list[str], sites: list[str], overwrite: bool = False) -> list[Path]:
    """The trial CA, the SuperLink's certificate for `hosts` and a key pair per site in `out`; the paths written.

    Refuses (before generating anything) bad names and, without `overwrite`, any file that exists already.
    """
    for host in hosts:
        check_host(host)
    for site in sites:
        check_name("--site", site)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: is a file, not a folder")
    names = ["ca.crt", "ca.key", "server.pem", "server.key"]
    names += [f"sites/{site}.{kind}" for site in dict.fromkeys(sites) for kind in ("key", "pub")]
    existing = next((out / n for n in names if (out / n).exists()), None)
    if existing is not None and not overwrite:
        raise InputError(
            f"{existing}: already exists; use --overwrite to replace it "
            "(a new CA means every site needs the new ca.crt)"
        )
    files = _tls_files(hosts)
    for site in dict.fromkeys(sites):
        files.update(_site_files(site))
    return _write_all({out / name: content for name, content in files.items()})


def _write_all(files: dict[Path, tuple[bytes, bool]]) -> list[Path]:
    """Stage every file beside its target, then rename them all: a failed write replaces nothing.

    mkstemp creates files readable by the owner only; a private key keeps that mode, so it is
    never readable by others, not even between the write and a chmod.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        try:
            for path, (data, private) in files.items():
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, name = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
                staged.append((Path(name), path))
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                if not private:
                    os.chmod(name, umask_mode(0o666))
        except OSError as e:
            raise InputError(f"{e.filename or path}: cannot write ({e.strerror or e}); nothing was replaced") from e
        for tmp, path in staged:
            os.replace(tmp, path)
        return [path for _, path in staged]
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
