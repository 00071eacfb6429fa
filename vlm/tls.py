"""HTTPS for phones on a LAN: browsers only open the camera on https:// or localhost.

Whatever pair is served is loaded once before the server starts (``tls_pair``): a key of another
certificate, swapped files, a corrupt or missing file or a passphrase-protected key stop the app
with one sentence, instead of a server that says ready and then fails (or prompts) on every connection.

``--self-signed`` makes a certificate once and reuses it, so a phone that accepted it once keeps
accepting it across restarts.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import re
import shlex
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .config import Settings
from .network import is_wildcard, lan_address

log = logging.getLogger(__name__)

CERT_DIR = Path.home() / ".cache" / "webcam-vlm"

_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
_PRIVATE_KEY = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )?PRIVATE KEY-----")
_ENCRYPTED = re.compile(rb"-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type: *4, *ENCRYPTED")


class TlsError(Exception):
    """A certificate or key that cannot be served; the message is one sentence naming the file and the problem."""


def tls_pair(settings: Settings) -> tuple[str, str]:
    """The certificate and key to serve https with, loaded once to be sure they work (else ``TlsError``)."""
    if settings.self_signed:
        cert, key = self_signed_certificate(host=settings.host)
    else:
        cert, key = Path(str(settings.ssl_cert)), Path(str(settings.ssl_key))
    check_pair(cert, key)
    return str(cert), str(key)


def check_pair(cert: Path, key: Path) -> None:
    """Load the pair as the server will, never asking for a passphrase; ``TlsError`` says what is wrong."""
    cert_pem, key_pem = _read(cert, "certificate"), _read(key, "key")
    if _ENCRYPTED.search(key_pem):
        raise TlsError(_encrypted(key))
    if _CERTIFICATE not in cert_pem and _PRIVATE_KEY.search(cert_pem):
        if _CERTIFICATE in key_pem:
            raise TlsError(
                f"the TLS certificate {cert} holds a private key and the key {key} a certificate: "
                "--ssl-cert and --ssl-key are swapped"
            )
        raise TlsError(f"the TLS certificate {cert} holds a private key, not a certificate")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=_refuse_passphrase)
    except _PassphraseNeeded:
        raise TlsError(_encrypted(key)) from None
    except ssl.SSLError as error:
        raise TlsError(_explain(cert, key, cert_pem, key_pem, error)) from None
    except OSError as error:  # changed between the read above and this one
        raise TlsError(f"the TLS file {error.filename} cannot be read: {error.strerror}") from None


class _PassphraseNeeded(Exception):
    pass


def _refuse_passphrase() -> bytes:
    """Without a callback OpenSSL prompts on the terminal; there is nobody there to answer for a server."""
    raise _PassphraseNeeded


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TlsError(f"the TLS {what} {path} does not exist") from None
    except IsADirectoryError:
        raise TlsError(f"the TLS {what} {path} is a folder, not a file") from None
    except OSError as error:
        raise TlsError(f"the TLS {what} {path} cannot be read: {error.strerror}") from None


def _encrypted(key: Path) -> str:
    plain = key.with_name(f"{key.stem}-plain{key.suffix or '.pem'}")
    return (
        f"the TLS key {key} is encrypted with a passphrase, which is not supported (a server has nobody to type it): "
        f"decrypt it once with `openssl pkey -in {shlex.quote(str(key))} -out {shlex.quote(str(plain))}` "
        f"and pass {plain} to --ssl-key"
    )


def _explain(cert: Path, key: Path, cert_pem: bytes, key_pem: bytes, error: ssl.SSLError) -> str:
    if error.reason == "KEY_VALUES_MISMATCH":
        return f"the TLS key {key} does not belong to the certificate {cert} (they are not one pair)"
    try:
        x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        return f"the TLS certificate {cert} is not a valid PEM certificate"
    try:
        serialization.load_pem_private_key(key_pem, None)
    except (ValueError, TypeError):
        return f"the TLS key {key} is not a valid PEM private key"
    except Exception:  # an algorithm cryptography does not know: OpenSSL's reason below says more
        pass
    return f"the TLS certificate {cert} and key {key} cannot be served: {error.reason or error}"


def self_signed_certificate(directory: Path = CERT_DIR, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """Return (cert, key) paths, creating a one-year certificate for this machine if missing."""
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "webcam-vlm on " + socket.gethostname())])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(_names(host)), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _names(host: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.DNSName(socket.gethostname())]
    addresses = {"127.0.0.1", lan_address()}
    if not is_wildcard(host):
        addresses.add(host)
    for address in sorted(a for a in addresses if a):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            names.append(x509.DNSName(address))
    return names
