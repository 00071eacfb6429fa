"""The --self-signed certificate: one pair for processes started together, replaced when it would not serve."""

from __future__ import annotations

import datetime
import errno
import logging
import multiprocessing
import queue
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import vlm.tls
from tests.certs import not_after, pair_matches, san_names, write_pair
from vlm.tls import self_signed_certificate

pytestmark = pytest.mark.unit

LAN = "198.51.100.7"  # what the machine's LAN address is taken to be, so the tests do not depend on its network


@pytest.fixture(autouse=True)
def lan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vlm.tls, "lan_address", lambda: LAN, raising=False)


def loads(cert: Path, key: Path) -> bool:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError):
        return False
    return True


def make_in_process(directory: str, start: object, results: object) -> None:
    start.wait()  # type: ignore[attr-defined]
    try:
        cert, key = self_signed_certificate(Path(directory))
        results.put((cert.read_bytes(), key.read_bytes()))  # type: ignore[attr-defined]
    except Exception as error:  # reported to the test, which fails on it
        results.put(repr(error))  # type: ignore[attr-defined]


def test_processes_started_together_agree_on_one_matching_pair(tmp_path: Path) -> None:
    """Two app processes started at once each wrote a key and a cert: the files on disk (cached for good) came
    from different processes in 21 of 30 QA trials."""
    context = multiprocessing.get_context("fork")
    for trial in range(6):
        directory = tmp_path / str(trial)
        start, results = context.Barrier(3), context.Queue()
        workers = [context.Process(target=make_in_process, args=(str(directory), start, results)) for _ in range(3)]
        for worker in workers:
            worker.start()
        try:
            got = [results.get(timeout=60) for _ in workers]
        except queue.Empty:
            got = ["a process did not answer"]
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.kill()
                worker.join()
        on_disk = ((directory / "cert.pem").read_bytes(), (directory / "key.pem").read_bytes())
        assert pair_matches(*on_disk), f"trial {trial}: the cached key does not belong to the cached cert"
        said = [pair if isinstance(pair, str) else "a pair" for pair in got]
        assert all(pair == on_disk for pair in got), f"trial {trial}: not every process got the cached pair: {said}"


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda cert, key: cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n"), id="corrupt cert"),
        pytest.param(lambda cert, key: key.write_bytes(key.read_bytes()[:60]), id="truncated key"),
        pytest.param(lambda cert, key: write_pair(cert.with_name("x.pem"), key), id="key of another cert"),
    ],
)
def test_a_cached_pair_that_does_not_load_is_replaced(tmp_path: Path, damage: object) -> None:
    cert, key = self_signed_certificate(tmp_path)
    damage(cert, key)  # type: ignore[operator]
    assert not loads(cert, key)
    again = self_signed_certificate(tmp_path)
    assert again == (cert, key) and loads(cert, key)


def test_an_expired_cached_certificate_is_replaced_and_the_log_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_pair(tmp_path / "cert.pem", tmp_path / "key.pem", valid_days=-35)
    with caplog.at_level(logging.INFO):
        cert, key = self_signed_certificate(tmp_path)
    assert not_after(cert) > datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=300)
    assert loads(cert, key)
    made = [record.getMessage() for record in caplog.records if record.levelno == logging.INFO]
    assert len(made) == 1 and "expired" in made[0], made


def test_a_certificate_about_to_expire_is_replaced(tmp_path: Path) -> None:
    write_pair(tmp_path / "cert.pem", tmp_path / "key.pem", valid_days=3)
    cert, _ = self_signed_certificate(tmp_path)
    assert not_after(cert) > datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=300)


def test_a_new_host_widens_the_certificate(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_pair(tmp_path / "cert.pem", tmp_path / "key.pem", names=("localhost", "127.0.0.1", "10.0.0.5"))
    with caplog.at_level(logging.INFO):
        cert, _ = self_signed_certificate(tmp_path, host="10.9.8.7")
    names = san_names(cert)
    assert {"localhost", "127.0.0.1", "10.9.8.7"} <= names
    assert "10.0.0.5" in names, "the names it had stay, so two hosts in turn do not remake it at every start"
    made = [record.getMessage() for record in caplog.records if record.levelno == logging.INFO]
    assert len(made) == 1 and "10.9.8.7" in made[0], made


def test_a_wildcard_host_needs_the_lan_address_the_app_prints(tmp_path: Path) -> None:
    write_pair(tmp_path / "cert.pem", tmp_path / "key.pem", names=("localhost", "127.0.0.1", "192.168.1.20"))
    cert, _ = self_signed_certificate(tmp_path, host="0.0.0.0")
    assert LAN in san_names(cert)
    assert "0.0.0.0" not in san_names(cert)


def test_a_good_certificate_is_reused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """What a phone accepted once stays accepted: no new certificate without a reason."""
    first = [path.read_bytes() for path in self_signed_certificate(tmp_path, host="0.0.0.0")]
    caplog.clear()
    write_pair(tmp_path / "other-cert.pem", tmp_path / "other-key.pem", valid_days=30)  # not the cached pair
    with caplog.at_level(logging.INFO):
        for host in ("0.0.0.0", "127.0.0.1", "localhost", LAN):
            assert [path.read_bytes() for path in self_signed_certificate(tmp_path, host=host)] == first
    assert not [record for record in caplog.records if record.levelno >= logging.INFO]


def test_a_certificate_with_a_month_left_is_reused(tmp_path: Path) -> None:
    cert, key = write_pair(tmp_path / "cert.pem", tmp_path / "key.pem", valid_days=30)
    before = cert.read_bytes()
    assert self_signed_certificate(tmp_path) == (cert, key)
    assert cert.read_bytes() == before


def test_a_cached_pair_in_a_folder_nobody_may_write_still_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container image with the pair baked into a read-only folder: the lock file cannot be made there, which
    must not stop a pair that needs no remaking (a pair that does is refused with the folder named)."""
    cert, key = self_signed_certificate(tmp_path, host="127.0.0.1")

    def read_only(path: Path) -> Iterator[None]:
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(vlm.tls, "_locked", contextmanager(read_only))
    assert self_signed_certificate(tmp_path, host="127.0.0.1") == (cert, key)
    cert.write_text("not a certificate")
    with pytest.raises(vlm.tls.TlsError, match="cannot be kept in"):
        self_signed_certificate(tmp_path, host="127.0.0.1")
