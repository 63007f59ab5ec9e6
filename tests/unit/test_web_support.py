"""Catalogue completeness, config validation, SSE format and the idle-timeout wipe (no daemons)."""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

import pytest

from cityid.chain.network import CONTRACT_KEYS
from terminal.config import ConfigError, Mode, check_password, hash_password, load_config, parse_config
from terminal.flows.kiosk import SERVICES
from terminal.verifier.messages import MESSAGES
from terminal.web.catalog import catalogue
from terminal.web.controller import KioskController, Screen
from terminal.web.events import EventHub, format_event
from terminal.web.verdicts import DISTRICT_KEYS, SERVICE_CLAIMS
from tests.doubles.fake_backends import FakeKioskBackend, FakeToken, screen_client

WEB = Path(__file__).resolve().parents[2] / "terminal" / "web"


# --- i18n ---------------------------------------------------------------------------------------------


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_both_catalogues_have_the_same_keys_and_placeholders() -> None:
    ko, en = catalogue("ko"), catalogue("en")
    assert set(ko) == set(en)
    for key in ko:
        assert ko[key].strip() and en[key].strip(), key
        assert _fields(ko[key]) == _fields(en[key]), key


def test_catalogue_files_are_sorted_flat_json() -> None:
    for lang in ("ko", "en"):
        data = json.loads((WEB / "i18n" / f"{lang}.json").read_text("utf-8"))
        assert list(data) == sorted(data) and all(isinstance(v, str) for v in data.values())


def test_templates_use_only_known_keys() -> None:
    keys = set(catalogue("en"))
    used: set[str] = set()
    for tpl in (WEB / "templates").glob("*.html"):
        used |= set(re.findall(r"""\bt\(\s*'([a-z0-9_.-]+)'\s*[,)]""", tpl.read_text("utf-8")))
    assert used, "no literal keys found: the scanner is broken"
    assert used <= keys, sorted(used - keys)


def test_python_keys_and_composed_keys_exist() -> None:
    keys = set(catalogue("en"))
    composed = {"services.lead.card", "services.lead.fido", "pin.title.card", "pin.title.fido"}
    for kind in ("card", "fido"):
        composed |= {f"blocked.title.{kind}", f"blocked.why.{kind}", f"blocked.todo.{kind}"}
    for sid, service in SERVICES.items():
        composed |= {f"service.{sid}.{part}" for part in ("title", "summary", "purpose")}
        composed |= {f"claim.{c}" for c in service.claims}
        assert SERVICE_CLAIMS[sid] == service.claims  # the screens show what the flow asks the card for
    composed |= set(DISTRICT_KEYS.values()) | {f"notice.{n}" for n in ("removed", "timeout", "error")}
    composed |= set(MESSAGES)  # every verifier reason can be shown
    py = "".join(p.read_text("utf-8") for p in WEB.glob("*.py"))
    found = set(re.findall(r'"((?:counter|verdict|reason|value|pin|state|error)\.[a-z0-9_.]+[a-z0-9])"', py))
    endpoints = {"counter.login", "counter.login_post", "counter.home"}
    composed |= {k for k in found if not k.endswith(".html") and k not in endpoints}
    assert composed <= keys, sorted(composed - keys)


def test_no_inline_script_style_or_handlers_in_templates() -> None:
    for tpl in (WEB / "templates").glob("*.html"):
        html = tpl.read_text("utf-8")
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), tpl.name
        assert not re.search(r"\son[a-z]+\s*=", html), tpl.name
        assert " style=" not in html and "<style" not in html, tpl.name
        assert "http://" not in html and "https://" not in html, tpl.name  # every asset is local


def test_static_assets_are_local_only() -> None:
    for asset in (WEB / "static").iterdir():
        if asset.is_dir():  # static/voice: generated WAV files (terminal.web.voice), no text to scan
            continue
        text = asset.read_text("utf-8")
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text
        assert "@import" not in text and "url(" not in text


# --- config -------------------------------------------------------------------------------------------


def test_defaults_bind_to_localhost() -> None:
    config = parse_config({})
    assert config.host == "127.0.0.1" and config.mode is Mode.KIOSK and config.idle_timeout == 30
    assert config.language == "ko" and config.chain.embedded


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"terminal": {"mode": "atm"}}, "terminal.mode: must be 'kiosk' or 'counter'"),
        ({"terminal": {"idle_timeout": 0}}, "terminal.idle_timeout: must be a number from 5"),
        ({"terminal": {"idle_timeout": True}}, "terminal.idle_timeout"),
        ({"terminal": {"language": "fr"}}, "terminal.language: must be one of ko, en"),
        ({"terminal": {"host": "kiosk.example"}}, "terminal.host"),
        ({"terminal": {"port": 70000}}, "terminal.port"),
        ({"terminal": {"services": []}}, "terminal.services"),
        ({"terminal": {"colour": "blue"}}, "terminal.colour: unknown setting"),
        ({"terminal": {"audience": "x" * 200}}, "terminal.audience"),
        ({"bogus": {}}, "bogus: unknown setting"),
        ({"chain": {"network": "metadium"}}, "chain.rpc: must be a http/https/ws/wss URL"),
        ({"chain": {"network": "m", "rpc": "http://n:8545", "chain_id": 11}}, "chain.addresses"),
        (
            {
                "chain": {
                    "network": "m",
                    "rpc": "http://n",
                    "chain_id": 11,
                    "addresses": {
                        "did_registry": "0x12",
                        "status_registry": "0x" + "1" * 40,
                        "trusted_issuers": "0x" + "2" * 40,
                    },
                }
            },
            "chain.addresses.did_registry: must be a 0x-prefixed 20-byte address",
        ),
        ({"chain": {"network_file": "/nonexistent/network.json"}}, "chain.network_file: no such file"),
        (
            {
                "chain": {
                    "network": "Metadium_X",
                    "rpc": "http://n",
                    "chain_id": 11,
                    "addresses": {k: "0x" + "1" * 40 for k in CONTRACT_KEYS},
                }
            },
            "chain: network name 'Metadium_X'",
        ),
        ({"terminal": {"mode": "counter"}}, "server.url: a counter terminal needs"),
        ({"server": {"url": "ftp://x"}}, "server.url"),
        ({"counter": {"clerks": {"kim": "plaintext"}}}, "counter.clerks.kim"),
    ],
)
def test_invalid_settings_name_the_key(doc: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(doc, "kiosk.toml")
    assert str(err.value).startswith("kiosk.toml: ") and message in str(err.value)


def test_load_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[terminal\nmode=", "utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    good = tmp_path / "kiosk.toml"
    good.write_text('[terminal]\nmode = "kiosk"\nid = "k-7"\nidle_timeout = 45\nlanguage = "en"\n', "utf-8")
    config = load_config(good)
    assert (config.terminal_id, config.idle_timeout, config.language) == ("k-7", 45.0, "en")


def test_clerk_password_hash_round_trip() -> None:
    hashed = hash_password("s3cret")
    assert hashed.startswith("scrypt$") and "s3cret" not in hashed
    assert check_password("s3cret", hashed) and not check_password("s3cret!", hashed)
    assert not check_password("s3cret", "scrypt$1$1$1$00$00")


# --- SSE ----------------------------------------------------------------------------------------------


def test_sse_message_format() -> None:
    msg = format_event("inserted", {"go": "/services", "kind": "card"}, 7)
    assert msg == 'id: 7\nevent: inserted\ndata: {"go":"/services","kind":"card"}\n\n'


def test_event_stream_sends_state_then_events_then_closes() -> None:
    hub = EventHub()
    stream = hub.stream(lambda: format_event("state", {"go": "/"}), keepalive=0.05)
    assert next(stream) == "retry: 1000\n\n"
    assert next(stream).startswith("event: state\n")
    hub.publish("removed", {"go": "/?notice=removed"})
    assert "event: removed" in next(stream)
    assert next(stream) == ": keepalive\n\n"
    hub.close()
    assert list(stream) == []
    assert hub.subscriber_count == 0


def test_events_endpoint_is_an_event_stream() -> None:
    from terminal.web import create_app, shutdown

    backend = FakeKioskBackend()
    app = create_app(parse_config({}), kiosk=backend)
    resp = screen_client(app).get("/events", buffered=False)
    try:
        assert resp.mimetype == "text/event-stream" and resp.headers["Cache-Control"] == "no-store"
        chunks = iter(resp.response)
        assert next(chunks) == b"retry: 1000\n\n"
        assert b'"go":"/"' in next(chunks)
    finally:
        shutdown(app)
        resp.close()


# --- idle timeout -------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_idle_timeout_wipes_the_session() -> None:
    clock, hub, backend = Clock(), EventHub(), FakeKioskBackend()
    ctl = KioskController(backend, hub, idle_timeout=30, clock=clock)
    backend.start(ctl.on_event)
    q = hub.subscribe()
    backend.insert(FakeToken(claims={"busan_resident": True, "age_over_65": True}))
    ctl.choose("benefit-check")
    ctl.consent(True)
    assert ctl.submit_pin("123456") is Screen.VERDICT
    assert ctl.snapshot()["verdict"] is not None
    clock.now += 29
    assert not ctl.check_idle() and ctl.screen is Screen.VERDICT
    ctl.touch()
    clock.now += 29.5
    assert not ctl.check_idle()
    clock.now += 1  # the countdown is showing now: at least 20 s of warning before the wipe (WCAG 2.2.1)
    assert not ctl.check_idle()
    clock.now += 20
    assert ctl.check_idle()
    assert ctl.snapshot() == {"screen": Screen.IDLE} and backend.ended == 1
    events = [q.get_nowait() for _ in range(q.qsize())]
    assert any("event: timeout" in e and "notice=timeout" in e for e in events)
    backend.remove()  # the card leaving afterwards changes nothing
    assert ctl.screen is Screen.IDLE and backend.ended == 1


def test_idle_timeout_waits_while_the_card_works() -> None:
    clock, backend = Clock(), FakeKioskBackend()
    ctl = KioskController(backend, EventHub(), idle_timeout=30, clock=clock)
    backend.start(ctl.on_event)
    backend.insert(FakeToken())
    ctl.choose("residence")
    ctl.consent(True)
    with ctl._lock:
        ctl._session.busy = True  # as during submit_pin
    clock.now += 100
    assert not ctl.check_idle()


def test_second_token_is_ignored_until_the_first_leaves() -> None:
    backend = FakeKioskBackend()
    ctl = KioskController(backend, EventHub())
    backend.start(ctl.on_event)
    backend.insert(FakeToken(), "A")
    ctl.choose("residence")
    backend.insert(FakeToken(kind="fido"), "B")
    assert ctl.screen is Screen.CONSENT and ctl.snapshot()["kind"] == "card"
    backend.remove("B")
    assert ctl.screen is Screen.CONSENT
    backend.remove("A")
    assert ctl.screen is Screen.IDLE


# --- contrast (WCAG 2.2 §1.4.3, relative luminance per the WCAG definition) ------------------------


def _luminance(hex_colour: str) -> float:
    def channel(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.04045 else ((s + 0.055) / 1.055) ** 2.4

    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def _contrast(a: str, b: str) -> float:
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def test_colour_pairs_meet_wcag_aa() -> None:
    css = (WEB / "static" / "kiosk.css").read_text("utf-8")
    var = dict(re.findall(r"--([a-z-]+):\s*(#[0-9a-fA-F]{6})", css))
    pairs = [
        (var["ink"], var["paper"]),
        (var["muted"], var["paper"]),
        ("#ffffff", var["band"]),  # header text, primary buttons
        (var["accent"], "#eef3fc"),  # service buttons
        (var["ok"], var["ok-bg"]),
        (var["no"], var["no-bg"]),
        ("#664d03", "#fff3cd"),  # notices
        (var["ink"], "#f3f4f6"),  # keypad keys
    ]
    for fg, bg in pairs:
        assert _contrast(fg, bg) >= 4.5, (fg, bg, round(_contrast(fg, bg), 2))
    for fg, bg in pairs[:6]:
        assert _contrast(fg, bg) >= 7.0, (fg, bg, round(_contrast(fg, bg), 2))  # the main colours: AAA
