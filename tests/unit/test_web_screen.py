"""The kiosk session belongs to the kiosk's screen (issue 10 item 1).

Only the browser that opened the one-time launch URL may drive or read the citizen flow; a foreign Host is
refused; no bind beyond loopback without TLS and client authentication. Flask test clients and a real TLS
server on loopback (no daemons)."""

from __future__ import annotations

import datetime
import logging
import re
import ssl
import stat
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flask import Flask
from flask.testing import FlaskClient

from terminal.cli import main
from terminal.config import ConfigError, parse_config
from terminal.web import create_app, shutdown
from terminal.web.controller import KioskController, Screen
from terminal.web.security import ScreenLock
from tests.doubles.fake_backends import FakeKioskBackend, FakeToken, screen_client

PIN = "123456"
SENIOR = {"busan_resident": True, "age_over_65": True, "family_name": "Kim", "given_name": "Minsu"}


@pytest.fixture
def backend() -> FakeKioskBackend:
    return FakeKioskBackend()


@pytest.fixture
def app(backend: FakeKioskBackend) -> Iterator[Flask]:
    config = parse_config({"terminal": {"language": "en", "require_clock_sync": False}})
    app = create_app(config, kiosk=backend)
    backend.start(app.extensions["cityid.kiosk"].on_event)
    yield app
    shutdown(app)


def ctl(app: Flask) -> KioskController:
    return app.extensions["cityid.kiosk"]


def csrf_of(client: FlaskClient, path: str = "/") -> str:
    html = client.get(path, follow_redirects=True).get_data(as_text=True)
    return re.search(r'name="csrf-token" content="([^"]+)"', html)[1]


def other_csrf(client: FlaskClient) -> str:
    """A CSRF token of the intruder's own session (it can always get one from a page anyone may load)."""
    html = client.get("/nope").get_data(as_text=True)  # the 404 page renders the token too
    return re.search(r'name="csrf-token" content="([^"]+)"', html)[1]


# --- a second client ---------------------------------------------------------------------------------


def test_a_second_client_cannot_read_or_drive_the_citizen_flow(
    app: Flask, backend: FakeKioskBackend, caplog: pytest.LogCaptureFixture
) -> None:
    screen = screen_client(app)
    intruder = app.test_client()
    tok = csrf_of(screen)
    backend.insert(FakeToken(pin=PIN, claims=SENIOR))
    screen.post("/services", data={"service": "residence", "csrf_token": tok})
    screen.post("/consent", data={"decision": "agree", "csrf_token": tok})
    assert ctl(app).screen is Screen.PIN
    bad = other_csrf(intruder)

    caplog.set_level(logging.WARNING)
    # change the service after consent, go back, consent again, burn PIN tries, touch, finish
    for path, data in [
        ("/services", {"service": "benefit-check"}),
        ("/back", {}),
        ("/consent", {"decision": "agree"}),
        ("/pin", {"pin": "000000"}),
        ("/pin", {"pin": "111111"}),
        ("/touch", {}),
        ("/done", {}),
    ]:
        assert intruder.post(path, data={**data, "csrf_token": bad}).status_code == 403, path
    for path in ("/", "/services", "/consent", "/pin", "/verdict", "/blocked", "/out-of-service", "/events"):
        resp = intruder.get(path)
        assert resp.status_code == 403, path
        assert "Minsu" not in resp.get_data(as_text=True)
    state = ctl(app).snapshot()
    assert state["screen"] is Screen.PIN and state["service"].id == "residence"  # purpose unchanged
    assert state["tries_left"] == 3 and backend.presented == []  # no PIN reached the card

    # the screen itself goes on normally and reads its verdict; the intruder still cannot
    assert screen.post("/pin", data={"pin": PIN, "csrf_token": tok}).headers["Location"] == "/verdict"
    assert "Minsu" in screen.get("/verdict").get_data(as_text=True)
    assert intruder.get("/verdict").status_code == 403

    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) >= 15 and all("not the kiosk screen" in r.getMessage() for r in refusals)
    logged = " ".join(r.getMessage() for r in caplog.records)
    for secret in ("000000", "111111", PIN, "Minsu", "residence", bad):
        assert secret not in logged


def test_touch_from_another_client_does_not_keep_the_session_alive(
    backend: FakeKioskBackend,
) -> None:
    now = [1000.0]
    app = create_app(parse_config({"terminal": {"idle_timeout": 30}}), kiosk=backend)
    controller = ctl(app)
    controller._clock = lambda: now[0]
    backend.start(controller.on_event)
    try:
        screen, intruder = screen_client(app), app.test_client()
        backend.insert(FakeToken())
        now[0] += 25
        bad = other_csrf(intruder)
        assert intruder.post("/touch", headers={"X-CSRF-Token": bad}).status_code == 403
        assert intruder.post("/lang", data={"lang": "en", "csrf_token": bad}).status_code == 303
        now[0] += 26
        assert controller.check_idle()  # 51 s (30 s + the 20 s countdown) after the citizen's last input
        backend.insert(FakeToken())
        now[0] += 25
        assert screen.post("/touch", headers={"X-CSRF-Token": csrf_of(screen)}).status_code == 204
        now[0] += 26
        assert not controller.check_idle()  # the screen's own touch counted
    finally:
        shutdown(app)


# --- the launch URL ----------------------------------------------------------------------------------


def test_launch_key_works_once_and_a_new_screen_ends_the_old_one(app: Flask) -> None:
    lock: ScreenLock = app.extensions["cityid.screen"]
    first_path = lock.launch_path()
    first = app.test_client()
    assert first.get(first_path).headers["Location"] == "/"
    assert first.get("/").status_code == 200
    assert lock.launch_path() != first_path  # rotated after use
    replay = app.test_client()
    assert replay.get(first_path).status_code == 403  # one time only
    assert replay.get("/screen/" + "A" * 43).status_code == 403
    assert replay.get("/").status_code == 403
    second = app.test_client()
    assert second.get(lock.launch_path()).status_code == 303
    assert second.get("/").status_code == 200
    assert first.get("/").status_code == 403  # re-launch: the old screen session is over


def test_launch_url_file_is_private_and_rewritten_after_use(tmp_path: Path) -> None:
    url_file = tmp_path / "screen-url"
    lock = ScreenLock(url_file=str(url_file))
    url = lock.launch_url("http://127.0.0.1:8080")
    assert url_file.read_text().strip() == url and url.startswith("http://127.0.0.1:8080/screen/")
    assert stat.S_IMODE(url_file.stat().st_mode) == 0o640
    assert lock.redeem(url.rsplit("/", 1)[1]) is not None
    new = url_file.read_text().strip()
    assert new != url and new == "http://127.0.0.1:8080" + lock.launch_path()
    assert lock.redeem(url.rsplit("/", 1)[1]) is None


def test_demo_lock_keeps_its_printed_url_for_the_run() -> None:
    lock = ScreenLock(rotate=False)
    key = lock.launch_path().rsplit("/", 1)[1]
    one, two = lock.redeem(key), lock.redeem(key)
    assert one and two and one != two
    assert lock.is_screen(two) and not lock.is_screen(one) and not lock.is_screen(None)


def test_health_and_counter_stay_open_to_other_clients(app: Flask) -> None:
    intruder = app.test_client()
    resp = intruder.get("/health")
    assert resp.status_code == 200 and resp.get_json()["status"] == "ok"
    assert intruder.get("/static/kiosk.css").status_code == 200


# --- Host (DNS rebinding) ----------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "127.0.0.1.evil.example", "[::2]:80"])
def test_a_foreign_host_is_refused(app: Flask, host: str, caplog: pytest.LogCaptureFixture) -> None:
    screen = screen_client(app)
    caplog.set_level(logging.WARNING)
    assert screen.get("/", headers={"Host": host}).status_code == 400
    assert app.test_client().get("/health", headers={"Host": host}).status_code == 400
    assert any("Host not allowed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1:8080", "[::1]:8080", "LOCALHOST:80"])
def test_loopback_hosts_are_accepted(app: Flask, host: str) -> None:
    client = app.test_client()
    launch = client.get(app.extensions["cityid.screen"].launch_path(), headers={"Host": host})
    assert launch.status_code == 303  # (the test client scopes the cookie to the Host it was set for)
    assert client.get("/", headers={"Host": host}).status_code == 200


def test_configured_server_names_are_accepted(backend: FakeKioskBackend) -> None:
    config = parse_config({"terminal": {"server_names": ["kiosk-7.busan.local"]}})
    app = create_app(config, kiosk=backend)
    try:
        client = app.test_client()
        host = {"Host": "kiosk-7.busan.local:8080"}
        assert client.get(app.extensions["cityid.screen"].launch_path(), headers=host).status_code == 303
        assert client.get("/", headers=host).status_code == 200
        assert client.get("/", headers={"Host": "kiosk-8.busan.local"}).status_code == 400
    finally:
        shutdown(app)
    with pytest.raises(ConfigError, match=r"terminal\.server_names"):
        parse_config({"terminal": {"server_names": ["bad name/"]}})


# --- binding beyond loopback -------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::"])
def test_non_loopback_bind_without_tls_and_client_auth_is_refused(
    host: str, backend: FakeKioskBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match=r"terminal\.host.*tls_client_ca"):
        parse_config({"terminal": {"host": host}})
    with pytest.raises(ConfigError, match=r"terminal\.host"):
        create_app(replace(parse_config({}), host=host), kiosk=backend)  # as `kiosk serve --host` does
    assert main(["serve", "--mode", "kiosk", "--host", host, "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "terminal.host" in err and "tls_client_ca" in err and "Traceback" not in err


def test_tls_needs_all_three_files(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="together"):
        parse_config({"terminal": {"host": "0.0.0.0", "tls_cert": str(cert), "tls_key": str(cert)}})
    with pytest.raises(ConfigError, match="no such file"):
        parse_config({"terminal": {"tls_cert": str(tmp_path / "none.pem")}})


def _pki(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (P-256, one day)."""
    now = datetime.datetime.now(datetime.UTC)

    def cert(
        name: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey,
        ca: bool, san: bool = False,
    ) -> x509.Certificate:  # fmt: skip
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            import ipaddress

            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kiosk test CA")])
    ca = cert("kiosk test CA", ca_key, ca_name, ca_key, True)
    out: dict[str, Path] = {}
    for label, is_server in (("server", True), ("client", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        c = cert(label, key, ca_name, ca_key, False, san=is_server)
        out[label] = folder / f"{label}.pem"
        out[label].write_bytes(c.public_bytes(serialization.Encoding.PEM))
        out[label + "_key"] = folder / f"{label}.key"
        out[label + "_key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    out["ca"] = folder / "ca.pem"
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return out


def test_tls_with_client_certificates_is_served_and_enforced(tmp_path: Path) -> None:
    from terminal.web.server import ServerThread

    pki = _pki(tmp_path)
    config = parse_config(
        {
            "terminal": {
                "host": "0.0.0.0",  # accepted: TLS with client authentication is configured
                "tls_cert": str(pki["server"]),
                "tls_key": str(pki["server_key"]),
                "tls_client_ca": str(pki["ca"]),
                "require_clock_sync": False,
            }
        }
    )
    assert config.tls
    backend = FakeKioskBackend()
    app = create_app(replace(config, host="127.0.0.1", port=0), kiosk=backend)
    with ServerThread(app, "127.0.0.1", 0) as server:
        assert server.url.startswith("https://127.0.0.1:")
        anonymous = ssl.create_default_context(cafile=str(pki["ca"]))
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            urllib.request.urlopen(server.url + "/health", context=anonymous, timeout=5).read()
        authed = ssl.create_default_context(cafile=str(pki["ca"]))
        authed.load_cert_chain(str(pki["client"]), str(pki["client_key"]))
        with urllib.request.urlopen(server.url + "/health", context=authed, timeout=5) as resp:
            assert resp.status == 200


def test_a_flood_of_refusals_is_logged_at_a_bounded_rate(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    intruder = app.test_client()
    caplog.set_level(logging.WARNING, "terminal.web.security")
    for _ in range(50):
        assert intruder.get("/verdict").status_code == 403
    lines = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 20  # the burst; the rest is summed up in the next minute's first line
