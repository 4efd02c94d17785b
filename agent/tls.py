"""The agent's TLS identity: a key and a self-signed certificate made at first boot and kept in the
state directory, so that after a stop and start (systemd runs the agent again) it still presents
the certificate whose fingerprint it registered. The platform pins that fingerprint; names,
issuer and expiry carry no trust, so the certificate never expires (RFC 5280's 99991231235959Z).
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NO_EXPIRY = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)


@dataclass(frozen=True)
class TlsIdentity:
    key_path: Path
    cert_path: Path
    sha256: str  # of the certificate's DER, lowercase hex: what the agent registers


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _create(key_path: Path, cert_path: Path, common_name: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))  # a clock that lags at first boot
        .not_valid_after(NO_EXPIRY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # The key first, the certificate last (each written whole, then renamed): a certificate on
    # disk always has its key beside it.
    for path, data in ((key_path, key_pem), (cert_path, cert.public_bytes(serialization.Encoding.PEM))):
        partial = path.with_name(path.name + ".partial")
        _write_private(partial, data)
        partial.replace(path)


def load_or_create(key_path: Path, cert_path: Path, common_name: str) -> TlsIdentity:
    """The agent's key and certificate, made on the first call and read back on every later one."""
    key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not (key_path.exists() and cert_path.exists()):
        _create(key_path, cert_path, common_name)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return TlsIdentity(key_path, cert_path, fingerprint(cert.public_bytes(serialization.Encoding.DER)))
