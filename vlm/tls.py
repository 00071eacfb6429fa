"""HTTPS for phones on a LAN: browsers only open the camera on https:// or localhost.

Whatever pair is served is loaded once before the server starts (``tls_pair``): a key of another
certificate, swapped files, a corrupt or missing file or a passphrase-protected key stop the app
with one sentence, instead of a server that says ready and then fails (or prompts) on every connection.

``--self-signed`` makes a certificate once and reuses it, so a phone that accepted it once keeps
accepting it across restarts. It is made again only when it would not serve: it does not load,
it expires within ``RENEW_BEFORE``, or it does not name an address the app is reached by. Processes
started together take a lock in the cache folder and write each file whole (temp file, then rename),
so they agree on one pair.
"""

from __future__ import annotations

import datetime
import fcntl
import ipaddress
import logging
import os
import re
import shlex
import socket
import ssl
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .config import Settings
from .network import is_wildcard, lan_address

log = logging.getLogger(__name__)

CERT_DIR = Path.home() / ".cache" / "webcam-vlm"
VALID_FOR = datetime.timedelta(days=365)
RENEW_BEFORE = datetime.timedelta(days=7)

_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
_PRIVATE_KEY = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )?PRIVATE KEY-----")
_ENCRYPTED = re.compile(rb"-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type: *4, *ENCRYPTED")


class TlsError(Exception):
    """A certificate or key that cannot be served; the message is one sentence naming the file and the problem."""


def tls_pair(settings: Settings) -> tuple[str, str]:
    """The certificate and key to serve https with, loaded once to be sure they work (else ``TlsError``)."""
    if settings.self_signed:
        self_signed_certificate(CERT_DIR, host=settings.host)
    else:
        cert, key = map(Path, served_files(settings))
        check_pair(cert, key)
        _warn_if_ending(cert)
    return served_files(settings)


def served_files(settings: Settings) -> tuple[str, str]:
    """Where the pair is, as the servers are given it; ``tls_pair`` makes (``--self-signed``) and checks it first."""
    cert, key = _cached_files(CERT_DIR) if settings.self_signed else (settings.ssl_cert, settings.ssl_key)
    return str(cert), str(key)


def tls_files(settings: Settings) -> dict[str, str]:
    """The server's ``certfile``/``keyfile`` options (none without https), as the start checks made (or remade) and
    loaded the pair: not loaded again, which would also repeat the warning about a certificate near its end."""
    if not settings.https:
        return {}
    cert, key = served_files(settings)
    return {"certfile": cert, "keyfile": key}


def _cached_files(directory: Path) -> tuple[Path, Path]:
    return directory / "cert.pem", directory / "key.pem"


def _warn_if_ending(cert: Path) -> None:
    """The operator's certificate is served whatever its dates; a WARNING says when browsers stop taking it."""
    try:
        expires = x509.load_pem_x509_certificates(cert.read_bytes())[0].not_valid_after_utc
    except ValueError:  # stricter than OpenSSL, which has loaded it: its dates are OpenSSL's business then
        return
    now = datetime.datetime.now(datetime.UTC)
    if expires <= now:
        log.warning("the TLS certificate %s expired on %s: browsers refuse it", cert, expires.date())
    elif expires - now < RENEW_BEFORE:
        log.warning("the TLS certificate %s expires on %s: browsers refuse it from then on", cert, expires.date())


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
    """Return (cert, key) paths, making a one-year certificate for this machine when the cached one would not do."""
    cert_path, key_path = _cached_files(directory)
    needed = _needed_names(host)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with _locked(directory / "cert.lock"):
            reason, kept = _why_remake(cert_path, key_path, needed)
            if reason is None:
                return cert_path, key_path
            names = needed | kept | {socket.gethostname().lower(), lan_address()}
            until = _write_pair(cert_path, key_path, sorted(name for name in names if name))
            check_pair(cert_path, key_path)
    except OSError as error:
        # A folder nobody may write (a read-only image) still serves a cached pair that needs no remaking.
        if _why_remake(cert_path, key_path, needed)[0] is None:
            return cert_path, key_path
        where = error.strerror or str(error)
        if directory.exists() and not directory.is_dir():
            where = "it is a file, not a folder"
        raise TlsError(
            f"the self-signed certificate cannot be kept in {directory}: {where} "
            "(make that folder writable, or pass --ssl-cert and --ssl-key instead)"
        ) from None
    log.info(
        "made a self-signed certificate in %s for %s, valid until %s (%s); a browser that accepted an earlier one "
        "asks once more",
        directory,
        ", ".join(sorted(name for name in names if name)),
        until.date(),
        reason,
    )
    return cert_path, key_path


def _needed_names(host: str) -> set[str]:
    """The names a browser may reach the app by: what the app prints, and this machine's own."""
    names = {"localhost", "127.0.0.1"}
    if is_wildcard(host):
        names.add(lan_address())  # the address the app prints for a wildcard --host (app.py page_urls)
    else:
        names.add(_normal(host))
    return {name for name in names if name}


def _normal(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name.lower()


def _why_remake(cert: Path, key: Path, needed: set[str]) -> tuple[str | None, set[str]]:
    """Why the cached pair must be made again (None: it serves as it is), and the names it had, to keep."""
    if not (cert.exists() or key.exists()):
        return "none was cached", set()
    try:
        check_pair(cert, key)
    except TlsError as error:
        return f"the cached pair does not load: {error}", set()
    certificate = x509.load_pem_x509_certificates(cert.read_bytes())[0]
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        had = {_normal(n) for n in sans.get_values_for_type(x509.DNSName)}
        had |= {str(address) for address in sans.get_values_for_type(x509.IPAddress)}
    except x509.ExtensionNotFound:
        had = set()
    expires = certificate.not_valid_after_utc
    now = datetime.datetime.now(datetime.UTC)
    if expires <= now:
        return f"the cached one expired on {expires.date()}", had
    if expires - now < RENEW_BEFORE:
        return f"the cached one expires on {expires.date()}, within {RENEW_BEFORE.days} days", had
    missing = needed - had
    if missing:
        return f"the cached one does not name {', '.join(sorted(missing))}", had
    return None, had


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock held while the block runs, shared by every process (and thread) that opens ``path``."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _write_pair(cert_path: Path, key_path: Path, names: list[str]) -> datetime.datetime:
    now = datetime.datetime.now(datetime.UTC)
    until = now + VALID_FOR
    key, certificate = new_pair(
        names, "webcam-vlm on " + socket.gethostname(), now - datetime.timedelta(minutes=5), until
    )
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_whole(key_path, private, 0o600)
    _write_whole(cert_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    return until


def new_pair(
    names: Iterable[str], common_name: str, valid_from: datetime.datetime, valid_until: datetime.datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new key and a self-signed certificate for ``names`` (host names or IP addresses)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_until)
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _write_whole(path: Path, data: bytes, mode: int) -> None:
    """A reader sees the old file or the new one, never part of one (a temp file renamed over it)."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
