"""Certificates and keys for the TLS tests, made with cryptography (the library the app uses) in a test's folder."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vlm.tls import new_pair


def write_pair(
    cert_path: Path,
    key_path: Path,
    *,
    names: tuple[str, ...] = ("localhost", "127.0.0.1"),
    valid_days: float = 365,
    passphrase: bytes | None = None,
) -> tuple[Path, Path]:
    """A self-signed certificate for ``names`` that expires ``valid_days`` from now (negative: already expired)."""
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(days=400), now + datetime.timedelta(days=valid_days))
    key, certificate = new_pair(names, "webcam-vlm test", *valid)
    encryption = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def san_names(cert_path: Path) -> set[str]:
    certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(value) for value in sans.get_values_for_type(x509.DNSName) + sans.get_values_for_type(x509.IPAddress)}


def not_after(cert_path: Path) -> datetime.datetime:
    return x509.load_pem_x509_certificate(cert_path.read_bytes()).not_valid_after_utc


def pair_matches(cert_pem: bytes, key_pem: bytes) -> bool:
    certificate = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, None)
    return bool(certificate.public_key().public_numbers() == key.public_key().public_numbers())  # type: ignore[union-attr]
