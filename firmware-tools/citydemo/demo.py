"""``kiosk demo``: the whole system on one machine, with nothing to set up.

This is a composition root (a host tool, like ``cardtool``): it is the one place that puts the emulated
cards (``emulators.card``), the city server (``server``) and the terminal app (``terminal.web``)
together. Library code keeps its one-way dependencies: ``terminal`` never imports the emulators and the
emulators never import ``terminal``.

What runs:

* an embedded chain (in-process py-evm) with the contracts deployed;
* the city server app on a local port (SQLite in a temporary folder, issuer key in memory, one counter
  terminal registered with a fresh key);
* demo citizens (fictional) enrolled through the real counter flow on virtual cards, one of them with a
  lost (revoked) card;
* the terminal app on 127.0.0.1 — kiosk screens at ``/`` (opened through the printed screen URL, which binds
  that browser as the kiosk's screen), counter screens at ``/counter/``, and the demo panel at ``/demo/``
  that puts any card or key on any of the three readers (kiosk, counter card reader, counter key reader) or
  takes it out, so every clerk task can be shown: unblock a card blocked at the kiosk, register a new
  security key, carry a newly enrolled card to the kiosk (docs/ui.md §Demo panel).

Cards reach the kiosk and the counter's card reader through pcscd + vpcd when available (the kiosk reader
is ``Virtual PCD 00 00``, the counter's ``Virtual PCD 00 01``; a pcscd is started when the vpcd driver is
installed and none runs), else through the in-process transport (``--no-pcsc``). vpcd has two readers: the
counter's key reader is always in-process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from emulators.card.citizen_card import make_citizen_card
from emulators.card.os import VirtualCard
from emulators.card.transport import DEFAULT_VPCD_PORT, InProcessConnection, VpcdCard
from firmware_tools.vpcd_env import (
    CARD_TIMEOUT,
    VPCD_SLOTS,
    VpcdTimeoutError,
    acquire_slot,
    can_start_pcscd,
    reader_has_card,
    running_pcscd,
    vpcd_readers,
    wait_for,
)
from werkzeug.serving import BaseWSGIServer, make_server

from cityid.apdu import SmartCardConnection
from cityid.cli_util import progress
from cityid.errors import CityIdError, NoCardError, NoReaderError
from terminal.config import TerminalConfig, hash_password
from terminal.flows.counter import CitizenRequest, CounterEnrollment
from terminal.flows.kiosk import SERVICES
from terminal.web.backend import TokenKind, TokenPresent, TokenRemoved
from terminal.web.demo_views import DemoCitizen, DemoReader
from terminal.web.verdicts import DISTRICT_KEYS

logger = logging.getLogger(__name__)

KIOSK_READER = VPCD_SLOTS[DEFAULT_VPCD_PORT]
COUNTER_READER = VPCD_SLOTS[DEFAULT_VPCD_PORT + 1]
KEY_READER = "Demo key reader"  # the counter's security-key reader (in-process: vpcd has two readers)
READERS = ("kiosk", "counter", "key")  # the demo panel's reader ids
DEMO_CLERK = "demo"
DEMO_CLERK_PASSWORD = "demo-clerk"  # noqa: S105 - printed for the demo; never a production setting
DEMO_PUK = "24681357"
KEY_PIN = "2468"  # the demo security key's own PIN
KEY_ID = "kim-key"
KIOSK_ID = "demo-kiosk"
CERT_WINDOW_S = 5.0  # the demo's anchoring batch window: a printed certificate verifies within seconds


def _public_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@dataclass(frozen=True, slots=True)
class Citizen:
    """A fictional demo citizen and what the counter enrolls for them."""

    id: str
    family_name: str
    given_name: str
    birthdate: str
    district: str
    resident: bool
    pin: str
    lost: bool = False  # the card is reported lost after enrollment: the kiosk must refuse it

    @property
    def age(self) -> int:
        return time.gmtime().tm_year - int(self.birthdate[:4])

    @property
    def label(self) -> str:
        """For the console: name, age, district and notes."""
        age = self.age
        notes = [] if self.resident else ["moved out of Busan"]
        if self.lost:
            notes.append("card reported lost")
        extra = f" ({', '.join(notes)})" if notes else ""
        return f"{self.family_name} {self.given_name}, ~{age}, {self.district}{extra}"


CITIZENS: tuple[Citizen, ...] = (
    Citizen("kim", "Kim", "Minsu", "1952-05-14", "Haeundae-gu", True, "135790"),
    Citizen("lee", "Lee", "Seoyeon", "1991-09-02", "Suyeong-gu", True, "246802"),
    Citizen("park", "Park", "Jiho", "1948-01-20", "Jung-gu", False, "112358"),
    Citizen("choi", "Choi", "Yuna", "1955-11-30", "Dongnae-gu", True, "314159", lost=True),
)


# --- pcscd + vpcd ---------------------------------------------------------------------------------


class Pcsc:
    """pcscd with the vpcd readers for the demo: the running one, or one started here (and stopped when
    nobody else uses it) — :mod:`firmware_tools.vpcd_env`.

    Holds both vpcd readers' locks (the ones the test fixtures use), so a demo and a test run never share a
    reader.
    """

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self._stack = contextlib.ExitStack()

    @staticmethod
    def available() -> bool:
        return KIOSK_READER in vpcd_readers() or can_start_pcscd()

    def start(self) -> None:
        for port in (DEFAULT_VPCD_PORT, DEFAULT_VPCD_PORT + 1):
            try:
                _, fd = acquire_slot([port], timeout=0)
            except VpcdTimeoutError:
                raise CityIdError("the virtual readers are in use (a test run or another demo)") from None
            self._stack.callback(os.close, fd)
        self.process = self._stack.enter_context(running_pcscd()).process
        for reader in (KIOSK_READER, COUNTER_READER):
            wait_for(lambda r=reader: not reader_has_card(r), CARD_TIMEOUT, f"{reader} to be empty")

    def stop(self) -> None:
        self._stack.close()


# --- the cards ------------------------------------------------------------------------------------


class CardSlot:
    """One reader of the demo: a virtual card can be put in and taken out (vpcd or in-process)."""

    def __init__(self, reader: str, port: int | None) -> None:
        self.reader = reader
        self.port = port  # None: in-process
        self.card: VirtualCard | None = None
        self.owner: str | None = None
        self._vpcd: VpcdCard | None = None
        self._conn: InProcessConnection | None = None
        self._lock = threading.Lock()

    def insert(self, card: VirtualCard, owner: str) -> None:
        with self._lock:
            self._remove_locked()
            self.card, self.owner = card, owner
            if self.port is not None:
                self._vpcd = VpcdCard(card, port=self.port)
                self._vpcd.start()
            else:
                self._conn = InProcessConnection(card)
        if self.port is not None:
            wait_for(lambda: reader_has_card(self.reader), CARD_TIMEOUT, f"a card in {self.reader}")

    def remove(self) -> None:
        with self._lock:
            was_vpcd = self._remove_locked()
        if was_vpcd:
            wait_for(lambda: not reader_has_card(self.reader), CARD_TIMEOUT, f"{self.reader} to be empty")

    def _remove_locked(self) -> bool:
        was_vpcd = self._vpcd is not None
        if self._vpcd is not None:
            self._vpcd.stop()
            self._vpcd = None
        if self._conn is not None:
            self._conn.remove()
            self._conn = None
        self.card = self.owner = None
        return was_vpcd

    def connect(self, reader: str) -> AbstractContextManager[SmartCardConnection]:
        """In-process mode: the connection to the card in this slot."""
        with self._lock:
            conn = self._conn
        if reader != self.reader or conn is None:
            raise NoCardError(f"no card in {reader}")
        return contextlib.nullcontext(conn)


# --- the environment ------------------------------------------------------------------------------


def _serve(app: Any, host: str = "127.0.0.1", port: int = 0) -> tuple[BaseWSGIServer, threading.Thread]:
    server = make_server(host, port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="city-server", daemon=True)
    thread.start()
    return server, thread


@dataclass
class DemoEnvironment:
    """Everything ``kiosk demo`` starts; :meth:`close` stops it all."""

    workdir: Path
    chain: Any
    server_url: str
    kiosk_slot: CardSlot
    counter_slot: CardSlot
    cards: dict[str, Path]
    enrolled: dict[str, str]  # citizen id → credential id
    keys: dict[str, Path]  # demo security keys (FIDO2) → state file
    kiosk_backend: Any
    counter_backend: Any
    config: TerminalConfig
    pcsc: Pcsc | None = None
    _closers: list[Callable[[], None]] = field(default_factory=list)
    printer: Any = None  # citydemo.printer.VirtualPrinter (the kiosk's receipt printer)
    printing: Any = None  # terminal.web.printing.KioskPrinting on it
    kiosk_key: Any = None  # the demo kiosk's terminal key (signs certificates)
    key_slot: CardSlot = field(default_factory=lambda: CardSlot(KEY_READER, None))  # the counter's key reader
    server_app: Any = None  # the city server's Flask app (tests wrap its wsgi_app, e.g. to freeze it)

    @property
    def slots(self) -> dict[str, CardSlot]:
        """The readers by demo id: ``kiosk``, ``counter`` (citizen cards) and ``key`` (security keys)."""
        return {"kiosk": self.kiosk_slot, "counter": self.counter_slot, "key": self.key_slot}

    def card(self, citizen_id: str) -> VirtualCard:
        """A fresh card (or key) object for the state file (as a freshly powered card)."""
        if citizen_id in self.keys:
            from emulators.fido.card import make_fido_card

            return make_fido_card(self.keys[citizen_id])[0]
        return make_citizen_card(self.cards[citizen_id])

    def close(self) -> None:
        for slot in (self.kiosk_slot, self.counter_slot, self.key_slot):
            with contextlib.suppress(CityIdError):
                slot.remove()
        for closer in reversed(self._closers):
            with contextlib.suppress(Exception):
                closer()
        if self.pcsc is not None:
            self.pcsc.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


class DemoPanel:
    """The demo panel's actions (terminal.web.demo_views.DemoPanel): every card and key — the demo
    citizens', the new blank cards and the new security keys — can be put on any reader or taken out."""

    def __init__(self, env: DemoEnvironment, citizens: Sequence[Citizen] = CITIZENS) -> None:
        self.env = env
        self._citizens = {c.id: c for c in citizens}
        self._new: dict[str, str] = {}  # blank cards and new keys: token id → kind ("blank" / "new_key")
        self._lock = threading.Lock()

    def citizens(self) -> Sequence[DemoCitizen]:
        where = {slot.owner: rid for rid, slot in self.env.slots.items() if slot.owner is not None}
        out = [
            self._entry(c, c.id, c.pin, where=where.get(c.id))
            for c in self._citizens.values()
            if c.id in self.env.cards
        ]
        if KEY_ID in self.env.keys:
            out.append(self._entry(self._citizens["kim"], KEY_ID, KEY_PIN, "fido", where.get(KEY_ID)))
        numbers: dict[str, int] = {}
        for token, kind in self._new.items():  # "New card 1, 2, …", "New security key 1, …"
            numbers[kind] = numbers.get(kind, 0) + 1
            out.append(DemoCitizen(token, "", "", kind, where=where.get(token), number=numbers[kind]))
        return out

    @staticmethod
    def _entry(
        c: Citizen, entry_id: str, pin: str, kind: str = "card", where: str | None = None
    ) -> DemoCitizen:
        notes = ([] if c.resident else ["demo.note.moved"]) + (["demo.note.lost"] if c.lost else [])
        name = f"{c.family_name} {c.given_name}"
        puk = DEMO_PUK if kind == "card" else ""
        return DemoCitizen(
            entry_id, name, pin, kind, c.age, DISTRICT_KEYS.get(c.district, ""), tuple(notes), where, puk=puk
        )

    def readers(self) -> Sequence[DemoReader]:
        return [DemoReader(rid, slot.reader, slot.owner) for rid, slot in self.env.slots.items()]

    def put(self, token: str, reader: str) -> None:
        """Put ``token`` on ``reader`` (taken from where it was; the reader's token goes back on the desk)."""
        if reader not in self.env.slots:
            raise KeyError(reader)
        if token not in self.env.cards and token not in self.env.keys:
            raise KeyError(token)
        with self._lock:
            for rid, slot in self.env.slots.items():
                if slot.owner == token or rid == reader:
                    self._take(rid)
            slot = self.env.slots[reader]
            slot.insert(self.env.card(token), token)
            if reader == "kiosk" and slot.port is None:
                kind = TokenKind.FIDO if token in self.env.keys else TokenKind.CARD
                self.env.kiosk_backend.feed(TokenPresent(slot.reader, kind, time.monotonic()))

    def take(self, reader: str) -> None:
        """Take whatever is on ``reader`` off it."""
        if reader not in self.env.slots:
            raise KeyError(reader)
        with self._lock:
            self._take(reader)

    def _take(self, reader: str) -> None:
        slot = self.env.slots[reader]
        if slot.owner is None:
            return
        slot.remove()
        if reader == "kiosk" and slot.port is None:
            self.env.kiosk_backend.feed(TokenRemoved(slot.reader, time.monotonic()))

    def tapped(self) -> str | None:
        return self.env.kiosk_slot.owner

    def tap(self, citizen_id: str) -> None:
        self.put(citizen_id, "kiosk")

    def remove(self) -> None:
        self.take("kiosk")

    def receipts(self) -> int:
        """How many receipts the virtual printer has cut."""
        return 0 if self.env.printer is None else len(self.env.printer.receipts)

    def receipt_png(self, index: int) -> bytes:
        """Receipt ``index`` (0 = first) as a PNG (IndexError: none)."""
        if self.env.printer is None:
            raise IndexError(index)
        return self.env.printer.receipt_png(index)

    def printer_state(self) -> str | None:
        """The printer's state at the last poll or print (``printer.state.*`` key), None if no printer."""
        status = None if self.env.printing is None else self.env.printing.last_status
        return None if status is None else status.message_key

    def new_blank_card(self) -> str:
        """A fresh, blank card on the counter reader (for enrollment at the counter screen); its id."""
        return self._new_token("blank", self.env.cards, "counter")

    def new_key(self) -> str:
        """A fresh FIDO2 security key (no PIN yet) on the counter's key reader, to register; its id."""
        return self._new_token("new_key", self.env.keys, "key")

    def _new_token(self, kind: str, files: dict[str, Path], reader: str) -> str:
        token = f"{'blank' if kind == 'blank' else 'newkey'}-{len(self._new) + 1}"
        files[token] = self.env.workdir / "cards" / f"{token}-{time.time_ns()}.json"
        self._new[token] = kind
        self.put(token, reader)
        return token


def build(
    use_pcsc: bool | None = None,
    citizens: Sequence[Citizen] = CITIZENS,
    workdir: Path | None = None,
) -> DemoEnvironment:
    """Start the chain and the server, enroll the demo citizens; return the environment (not yet serving)."""
    from cityid.chain.live import LiveChainView
    from cityid.credential import CLAIM_NAMES
    from server.app import create_app as create_server_app
    from server.chain.registrar import start_embedded
    from server.config import ServerConfig
    from server.db import Database
    from server.keys import KeystoreSigner
    from terminal.flows.authorization import CertificateRenewer, TerminalAuthorization
    from terminal.flows.counter_journal import JournalStore
    from terminal.flows.tokens import pcsc_connect
    from terminal.server_client import COUNTER_TIMEOUT, ServerClient
    from terminal.verifier import NonceStore, Verifier
    from terminal.web.stack import CardCounterBackend, CardKioskBackend, PcscKioskBackend

    workdir = workdir or Path(tempfile.mkdtemp(prefix="cityid-demo-"))
    (workdir / "cards").mkdir(parents=True, exist_ok=True)
    closers: list[Callable[[], None]] = []
    pcsc: Pcsc | None = None
    try:
        auto = use_pcsc is None
        if use_pcsc is None:
            use_pcsc = Pcsc.available()
        if use_pcsc:
            pcsc = Pcsc()
            try:
                pcsc.start()
                progress("using pcscd + vpcd ('Virtual PCD 00 00' for the kiosk, '00 01' for the counter)")
            except CityIdError as exc:
                pcsc.stop()
                pcsc = None
                if not auto:
                    raise
                use_pcsc = False
                progress(f"pcscd + vpcd not usable ({exc}): using the in-process card transport")
        else:
            progress("using the in-process card transport (no pcscd)")

        progress("starting the embedded chain and deploying the contracts")
        from server.chain.registrar import HOT_INDEX

        chain = start_embedded(name="busan-demo", registrar_index=HOT_INDEX)
        from server.chain.gateway import RegistrarGateway
        from server.chain.registrar import bootstrap_embedded

        signer = KeystoreSigner(ec.generate_private_key(ec.SECP256R1()))
        roles = bootstrap_embedded(chain, signer.public_point)  # the root's ceremonies, on the demo chain
        gateway = RegistrarGateway(roles.registrar, roles.issuer_did)

        progress("starting the city server")
        db_url = f"sqlite:///{workdir / 'city-server.db'}"
        db = Database.from_url(db_url)
        # a fresh lost-card HMAC key per demo run (docs/server.md §Lost-card report)
        server_config = ServerConfig(
            database_url=db_url,
            revocation_secret=secrets.token_hex(32),
            management_key=demo_management_key(),
        )
        # the city authorization key: signs the kiosk's and the counter's terminal certificates, whose
        # public key every demo card gets at personalization (docs/card-profile.md §Terminal authentication)
        authorization_signer = KeystoreSigner(ec.generate_private_key(ec.SECP256R1()))
        db.init(server_config.status_list_id, server_config.status_list_capacity)  # `city-server db init`
        server_app = create_server_app(
            server_config, chain=gateway, signer=signer, db=db, authorization_signer=authorization_signer
        )
        terminal_key = ec.generate_private_key(ec.SECP256R1())
        pem = terminal_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        # A supervisor: the counter's FIDO-registration flow adds a key to the citizen's existing DID and
        # does not yet send the card's presence proof (docs/server.md §Scopes).
        db.add_terminal("demo-counter", pem.decode(), office="demo", role="supervisor")
        kiosk_key = ec.generate_private_key(ec.SECP256R1())
        db.add_terminal(KIOSK_ID, _public_pem(kiosk_key))  # certificates are signed by the kiosk's key
        terminals = server_app.extensions["cityid.terminals"]  # authorizations recorded on chain
        terminals.authorize("demo-counter", CLAIM_NAMES)  # the self-check presents every claim
        terminals.authorize(KIOSK_ID, sorted({c for s in SERVICES.values() for c in s.claims}))
        server_app.extensions["cityid.certificates"].queue.window_s = CERT_WINDOW_S
        http, http_thread = _serve(server_app)

        def close_http() -> None:
            http.shutdown()
            http.server_close()
            http_thread.join(5)

        closers.append(close_http)
        server_url = f"http://127.0.0.1:{http.server_port}"
        # the set-up enrolls with a patient client; the counter screens wait as a real counter does
        client = ServerClient(server_url, "demo-counter", terminal_key, timeout=60, clerk=DEMO_CLERK)
        counter_client = ServerClient(server_url, "demo-counter", terminal_key, timeout=COUNTER_TIMEOUT)

        kiosk_view = LiveChainView(chain.client(), chain.network)
        counter_view = LiveChainView(chain.client(), chain.network)
        # with terminal authentication the card signs aud = the terminal id of the certificate
        counter_verifier = Verifier(counter_view, "demo-counter", NonceStore())
        counter_auth = TerminalAuthorization("demo-counter", terminal_key)
        kiosk_auth = TerminalAuthorization(KIOSK_ID, kiosk_key)
        kiosk_client = ServerClient(server_url, KIOSK_ID, kiosk_key, timeout=60)
        for auth, renew in (
            (counter_auth, client.terminal_certificate),
            (kiosk_auth, kiosk_client.terminal_certificate),
        ):
            renewer = CertificateRenewer(auth, renew)
            renewer.start()  # the first renewal now, then in the background before expiry
            closers.append(renewer.stop)
            if auth.certificate is None:
                raise CityIdError(f"no terminal certificate for {auth.terminal_id}: {renewer.last_error}")

        progress(f"enrolling {len(citizens)} demo citizens on virtual cards through the counter flow")
        journal = JournalStore(workdir / "counter-journal.sqlite")  # survives a counter restart
        closers.append(journal.close)
        enrollment = CounterEnrollment(client, counter_verifier, journal=journal, authorization=counter_auth)
        cards: dict[str, Path] = {}
        enrolled: dict[str, str] = {}
        dids: dict[str, str] = {}
        for c in citizens:
            path = workdir / "cards" / f"{c.id}.json"
            conn = InProcessConnection(make_citizen_card(path))
            request = CitizenRequest(
                family_name=c.family_name,
                given_name=c.given_name,
                birthdate=c.birthdate,
                district=c.district,
                busan_resident=c.resident,
                new_pin=c.pin,
                new_puk=DEMO_PUK,
            )
            outcome = enrollment.run(conn, request)
            cards[c.id] = path
            enrolled[c.id] = outcome.credential_id
            dids[c.id] = outcome.citizen_did
            if c.lost:
                client.revoke([outcome.credential_id], "lost")
        keys: dict[str, Path] = {}
        if "kim" in dids:
            progress("registering a FIDO2 security key for Kim, with a credential in its largeBlob")
            keys[KEY_ID] = _make_key(workdir, client, next(c for c in citizens if c.id == "kim"), dids["kim"])

        kiosk_slot = CardSlot(
            KIOSK_READER if use_pcsc else "Demo kiosk reader", DEFAULT_VPCD_PORT if use_pcsc else None
        )
        counter_slot = CardSlot(
            COUNTER_READER if use_pcsc else "Demo counter reader", DEFAULT_VPCD_PORT + 1 if use_pcsc else None
        )
        key_slot = CardSlot(KEY_READER, None)
        kiosk_verifier = Verifier(kiosk_view, KIOSK_ID, NonceStore())
        services = list(SERVICES.values())

        def counter_connect(reader: str) -> AbstractContextManager[SmartCardConnection]:
            """The counter's two readers: the card reader (vpcd or in-process) and the key reader."""
            for slot in (counter_slot, key_slot):
                if reader == slot.reader:
                    return pcsc_connect(reader) if slot.port is not None else slot.connect(reader)
            raise NoReaderError(f"no reader {reader!r} at the demo counter")

        counter_backend = CardCounterBackend(
            counter_client,
            counter_verifier,
            connect=counter_connect,
            readers=lambda: [counter_slot.reader, key_slot.reader],
            journal=journal,
            authorization=counter_auth,
        )
        if use_pcsc:
            kiosk_backend: Any = PcscKioskBackend(
                kiosk_verifier, services, reader_filter=KIOSK_READER, authorization=kiosk_auth
            )
        else:
            kiosk_backend = CardKioskBackend(
                kiosk_verifier, services, kiosk_slot.connect, authorization=kiosk_auth
            )
        from citydemo.printer import VirtualPrinter, make_printing

        printer = VirtualPrinter(workdir)
        closers.append(printer.close)
        progress(f"virtual receipt printer on {printer.port} ({printer.transport})")
        printing = make_printing(printer, kiosk_key, KIOSK_ID, server_url, chain.network)
        config = TerminalConfig(
            terminal_id=KIOSK_ID,
            audience=KIOSK_ID,  # terminal authentication: the card's aud is the certificate's terminal id
            language="ko",
            server_url=server_url,
            clerks={DEMO_CLERK: hash_password(DEMO_CLERK_PASSWORD)},
            require_clock_sync=False,  # a laptop demo runs wherever it is started
        )
        env = DemoEnvironment(
            workdir, chain, server_url, kiosk_slot, counter_slot, cards, enrolled, keys, kiosk_backend,
            counter_backend, config, pcsc, closers, printer=printer, printing=printing, kiosk_key=kiosk_key,
            key_slot=key_slot, server_app=server_app,
        )  # fmt: skip
        pcsc = None  # owned by env now
        return env
    except BaseException:
        for closer in reversed(closers):
            with contextlib.suppress(Exception):
                closer()
        if pcsc is not None:
            pcsc.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def demo_management_key() -> Any:
    """The demo's management master key (docs/card-profile.md, "Per-card management key").

    DEMO ONLY — never for real cards: a software AES-256 master key, fresh per run (or
    ``CITY_MANAGEMENT_MASTER_KEY`` to keep the demo cards' keys across runs), so that no demo card
    keeps the published default management key. A city server uses an HSM (``source = "pkcs11"``).
    """
    from server.config import ManagementKeyConfig

    master = os.environ.get("CITY_MANAGEMENT_MASTER_KEY") or secrets.token_hex(32)
    progress("DEMO ONLY: per-card management keys from a software master key (a city server uses its HSM)")
    return ManagementKeyConfig(source="software", software_master_key=master)


def _make_key(workdir: Path, client: Any, citizen: Citizen, did: str) -> Path:
    """A virtual FIDO2 key for ``citizen``: PIN set, discoverable credential for the city RP, the citizen
    credential issued to the key's public key (cnf) and kept in its largeBlob (docs/credential-format.md)."""
    from emulators.fido.attestation import AttestationBatch
    from emulators.fido.card import make_fido_card

    from terminal.flows.fido_registration import register_key
    from terminal.flows.tokens import open_fido

    path = workdir / "cards" / f"{KEY_ID}.json"
    # The demo's keys share one test attestation batch in the work directory (docs/fido.md "Attestation");
    # the key's state names it, so the key attests alike when the demo re-creates it from the state file.
    batch = AttestationBatch.open(workdir / "fido-attestation-batch")
    card, _applet = make_fido_card(path, attestation=batch)
    root = batch.root_pem
    request = CitizenRequest(
        family_name=citizen.family_name,
        given_name=citizen.given_name,
        birthdate=citizen.birthdate,
        district=citizen.district,
        busan_resident=citizen.resident,
        new_pin=KEY_PIN,
        new_puk=DEMO_PUK,
    )
    session = open_fido(InProcessConnection(card))
    register_key(session, client, request.claims, did, KEY_PIN, trusted_roots=[root.encode()] if root else [])
    return path


@contextlib.contextmanager
def running(
    host: str = "127.0.0.1",
    port: int = 8080,
    use_pcsc: bool | None = None,
    language: str = "ko",
    idle_timeout: float = 30.0,
) -> Iterator[tuple[DemoEnvironment, Any]]:
    """The demo serving on ``host:port``: yields (environment, ServerThread)."""
    from terminal.web import create_app
    from terminal.web.security import ScreenLock
    from terminal.web.server import ServerThread

    env = build(use_pcsc)
    try:
        config = replace(env.config, language=language, idle_timeout=idle_timeout, host=host, port=port)
        panel = DemoPanel(env)
        # The printed screen URL stays valid for this run (each use re-binds the screen to that browser).
        screen = ScreenLock(rotate=False)
        app = create_app(
            config, kiosk=env.kiosk_backend, counter=env.counter_backend, demo=panel, screen=screen,
            printing=env.printing,
        )  # fmt: skip
        panel.new_blank_card()
        with ServerThread(app, host, port, dev=True) as server:  # the demo keeps Werkzeug's dev server
            yield env, server
    finally:
        env.close()
