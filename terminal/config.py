"""The terminal's configuration file (TOML), validated at start with clear errors.

A kiosk or counter terminal reads one file (``kiosk serve --config FILE``)::

    [terminal]
    mode = "kiosk"                 # or "counter"
    id = "busan-kiosk-001"         # shown on screens and in audit trails
    audience = "https://kiosk.busan.go.kr/busan-kiosk-001"   # the KB-JWT "aud" this terminal accepts
    language = "ko"                # default language: "ko" or "en"
    idle_timeout = 30              # seconds without activity before a session is wiped
    services = ["benefit-check", "residence"]
    host = "127.0.0.1"             # bind address (localhost by default)
    port = 8080
    reader = ""                    # only use readers whose name contains this (empty: any)
    server_names = []              # extra Host names the screen may be reached by (DNS-rebinding check)
    screen_url_file = ""           # write the one-time screen launch URL here (0600); "" = print it
    require_clock_sync = true      # out of service while the kernel says the clock is not synchronised
    terminal_authentication = true   # authenticate to citizen cards with a city terminal certificate
                                     # (needs [server] url + terminal_key; false: lab/test setups only)
    tls_cert = ""                  # PEM certificate + key: required (with tls_client_ca) off loopback
    tls_key = ""
    tls_client_ca = ""             # CA whose client certificates may connect (TLS client authentication)

    [chain]
    network = "embedded"           # or a network name with rpc/chain_id/addresses, or network_file
    rpc = "http://127.0.0.1:8545"
    chain_id = 31337
    max_staleness = 300            # seconds of chain data age after which the kiosk fails closed
    nodes = []                     # more independent nodes of the same chain (https off the loopback)
    quorum = 1                     # how many nodes must agree on the block (default: a majority)
    cache = "chain-cache.sqlite"   # kiosk sync cache beside this file ("" = read the nodes live)
    confirmations = 0              # blocks a change must be deep before the cache applies it (PoA: 0)
    status_lists = []              # status list ids the cache follows ([] = every list)
    issuers = []                   # issuer DIDs the cache follows ([] = every accreditation)
    allow_plain_http = false       # TEST ONLY: plain http to a node off the loopback (logged loudly)
    [chain.addresses]              # every contract of cityid.chain.network.CONTRACT_KEYS
    did_registry = "0x…"
    status_registry = "0x…"
    trusted_issuers = "0x…"
    anchor_registry = "0x…"
    multicall = "0x…"

    [server]
    url = "http://127.0.0.1:8700"  # the city server (every terminal: certificates; counters: enrollment)
    terminal_key = "counter-key.pem"

    [printer]                      # optional: ESC/POS receipt printer (docs/printer.md)
    port = "/dev/ttyUSB0"
    baudrate = 115200
    flow_control = "rtscts"        # none | rtscts | xonxoff | dsrdtr
    profile = "TM-T88V"            # a python-escpos printer profile
    paper_width = 80               # mm: 80 or 58

    [scanner]                      # optional, counter: serial QR scanner (verifies printed certificates)
    port = "/dev/ttyACM0"
    baudrate = 9600

    [counter.clerks]
    kim = "scrypt$16384$8$1$<salt hex>$<hash hex>"   # from `kiosk clerk-password`

Secrets (the Flask session key, the terminal key password) come from the environment or a systemd credential
file ``$CREDENTIALS_DIRECTORY/<name>`` (cityid.secrets), never the file:
``CITYID_KIOSK_SECRET``, ``CITYID_TERMINAL_KEY_PASSWORD``. The full reference is docs/ui.md.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cityid.chain.network import CONTRACT_KEYS as _CONTRACTS
from cityid.chain.network import NetworkConfig
from cityid.errors import CityIdError
from cityid.secrets import secret as _secret
from terminal.peripherals.printer import FLOW_CONTROLS, PAPER_DOTS, PrinterSettings

LANGUAGES = ("ko", "en")
DEFAULT_SERVICES = ("benefit-check", "residence")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9.:-]*[A-Za-z0-9])?$")


class ConfigError(CityIdError, ValueError):
    """The configuration file is missing, unreadable or invalid; the message names the file and key."""


class Mode(StrEnum):
    """What the terminal's screen is for."""

    KIOSK = "kiosk"  # unattended citizen kiosk
    COUNTER = "counter"  # clerk's screen at a post-office counter


@dataclass(frozen=True, slots=True)
class ChainSettings:
    """Where the chain is. ``network == "embedded"`` means an in-process chain (demo and tests)."""

    network: str = "embedded"
    rpc: str = ""
    chain_id: int = 0
    addresses: dict[str, str] = field(default_factory=dict)
    network_file: str = ""
    max_staleness: float = 300.0
    nodes: tuple[str, ...] = ()  # extra nodes besides ``rpc`` / the network file's rpc_url
    quorum: int = 0  # 0: a majority of all nodes
    cache: str = ""  # sync cache path ("" = live reads)
    status_lists: tuple[int, ...] = ()
    issuers: tuple[str, ...] = ()
    allow_plain_http: bool = False
    confirmations: int = 0

    @property
    def embedded(self) -> bool:
        return self.network == "embedded" and not self.network_file


@dataclass(frozen=True, slots=True)
class ScannerSettings:
    """``[scanner]``: a serial QR/barcode scanner (USB-serial or RS-232) at a counter."""

    port: str
    baudrate: int = 9600


@dataclass(frozen=True, slots=True)
class TerminalConfig:
    """The validated configuration of one terminal."""

    mode: Mode = Mode.KIOSK
    terminal_id: str = "busan-kiosk-dev"
    audience: str = "https://kiosk.busan.go.kr/busan-kiosk-dev"
    language: str = "ko"
    idle_timeout: float = 30.0
    services: tuple[str, ...] = DEFAULT_SERVICES
    host: str = "127.0.0.1"
    port: int = 8080
    reader: str = ""
    chain: ChainSettings = field(default_factory=ChainSettings)
    server_url: str = ""
    terminal_key: str = ""
    clerks: dict[str, str] = field(default_factory=dict)
    server_names: tuple[str, ...] = ()
    screen_url_file: str = ""
    require_clock_sync: bool = True
    #: authenticate to citizen cards with a city-issued terminal certificate, renewed from [server] in the
    #: background (docs/card-profile.md §Terminal authentication); the verifier's audience is then ``id``.
    #: On by default; ``false`` is for lab/test setups only (:func:`terminal_authentication_warning`)
    terminal_authentication: bool = True
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    printer: PrinterSettings | None = None
    scanner: ScannerSettings | None = None  # the counter's serial QR scanner
    secret_key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    source: str = "<defaults>"

    @property
    def tls(self) -> bool:
        """TLS with client authentication configured (all three files)."""
        return bool(self.tls_cert and self.tls_key and self.tls_client_ca)

    @property
    def allowed_hosts(self) -> frozenset[str]:
        """Host names requests may carry (no port, lower case, IPv6 without brackets; docs/ui.md)."""
        names = {"localhost", "127.0.0.1", "::1", *(n.lower() for n in self.server_names)}
        if not is_wildcard(self.host):
            names.add(self.host.lower())
        return frozenset(names)


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` keeps the app on this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    """``0.0.0.0`` / ``::``: every interface."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def check_bind(config: TerminalConfig) -> None:
    """Refuse a bind beyond loopback without TLS and client authentication (issue 10, docs/ui.md)."""
    if not is_loopback(config.host) and not config.tls:
        raise ConfigError(
            f"{config.source}: terminal.host: {config.host!r} is reachable from other machines; set "
            "terminal.tls_cert, tls_key and tls_client_ca (TLS with client certificates) or bind to 127.0.0.1"
        )


def check_terminal_authentication(config: TerminalConfig) -> None:
    """Terminal authentication is on (the default) but ``[server] url`` / ``terminal_key`` are missing: one
    line saying what to add, or how a lab setup opts out (docs/ui.md; docs/card-profile.md §Terminal
    authentication)."""
    if not config.terminal_authentication:
        return
    missing = [k for k, v in (("url", config.server_url), ("terminal_key", config.terminal_key)) if not v]
    if missing:
        raise ConfigError(
            f"{config.source}: terminal authentication (the default) needs [server] "
            f"{' and '.join(missing)}: add the city server URL and this terminal's key (`city-server "
            "terminal keygen`, `terminal add`, `terminal authorize`), or for a lab/test setup only set "
            "terminal.terminal_authentication = false"
        )


def terminal_authentication_warning(config: TerminalConfig) -> str | None:
    """What an explicit opt-out costs, for the start-up log and ``kiosk doctor``; None when it is on."""
    if config.terminal_authentication:
        return None
    if config.mode is Mode.COUNTER:
        return (
            "terminal.terminal_authentication = false: this counter writes no authorization root — the cards "
            "it personalizes answer ANY terminal (a fake kiosk may ask for every claim); lab/test setups only"
        )
    return (
        "terminal.terminal_authentication = false: this kiosk cannot read cards that carry an authorization "
        "root (every card from a default counter); lab/test setups only"
    )


def _fail(source: str, key: str, why: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: {why}")


def _take(table: dict[str, Any], source: str, prefix: str, allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise _fail(source, f"{prefix}{unknown[0]}", f"unknown setting (known: {', '.join(sorted(allowed))})")


def _str(table: dict[str, Any], key: str, source: str, prefix: str, default: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise _fail(source, prefix + key, f"must be a string, not {type(value).__name__}")
    return value


def _number(
    table: dict[str, Any], key: str, source: str, prefix: str, default: float, lo: float, hi: float
) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise _fail(source, prefix + key, f"must be a number from {lo:g} to {hi:g}, got {value!r}")
    return float(value)


def _check_url(value: str, source: str, key: str, schemes: tuple[str, ...]) -> str:
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.netloc:
        raise _fail(source, key, f"must be a {'/'.join(schemes)} URL, got {value!r}")
    return value.rstrip("/")


def _chain(table: object, source: str) -> ChainSettings:
    if table is None:
        return ChainSettings()
    if not isinstance(table, dict):
        raise _fail(source, "chain", "must be a table")
    p = "chain."
    _take(
        table,
        source,
        p,
        {
            *("network", "rpc", "chain_id", "addresses", "network_file", "max_staleness"),
            *("nodes", "quorum", "cache", "status_lists", "issuers", "allow_plain_http", "confirmations"),
        },
    )
    network = _str(table, "network", source, p, "embedded")
    network_file = _str(table, "network_file", source, p, "")
    staleness = _number(table, "max_staleness", source, p, 300, 1, 86400)
    if network == "embedded" and not network_file:
        return ChainSettings(max_staleness=staleness)
    trust = _chain_trust(table, source, p)
    if network_file:
        path = Path(network_file)
        if not path.is_absolute() and source not in ("<defaults>", "<dict>"):
            path = Path(source).parent / path
        if not path.is_file():
            raise _fail(source, p + "network_file", f"no such file: {path}")
        return ChainSettings(network=network, network_file=str(path), max_staleness=staleness, **trust)
    if not _ID.match(network):
        raise _fail(source, p + "network", f"must be 'embedded' or a network name, got {network!r}")
    rpc = _check_url(_str(table, "rpc", source, p, ""), source, p + "rpc", ("http", "https", "ws", "wss"))
    chain_id = table.get("chain_id")
    if isinstance(chain_id, bool) or not isinstance(chain_id, int) or chain_id <= 0:
        raise _fail(source, p + "chain_id", f"must be a positive integer, got {chain_id!r}")
    addresses = table.get("addresses")
    if not isinstance(addresses, dict):
        raise _fail(source, p + "addresses", f"a table with {', '.join(_CONTRACTS)} is required")
    _take(addresses, source, p + "addresses.", set(_CONTRACTS))
    for name, value in addresses.items():
        if not isinstance(value, str) or not _ADDRESS.match(value):
            raise _fail(
                source, f"{p}addresses.{name}", f"must be a 0x-prefixed 20-byte address, got {value!r}"
            )
    for name in _CONTRACTS:
        if name not in addresses:
            raise _fail(source, f"{p}addresses.{name}", "missing")
    try:  # the chain layer's own rules (network name, checksums) — written once, in cityid.chain.network
        NetworkConfig.from_json(
            {"name": network, "chain_id": chain_id, "rpc_url": rpc, "addresses": addresses}
        )
    except CityIdError as exc:
        raise _fail(source, "chain", str(exc)) from None
    return ChainSettings(network, rpc, chain_id, dict(addresses), "", staleness, **trust)


def _chain_trust(table: dict[str, Any], source: str, p: str) -> dict[str, Any]:
    """[chain] nodes / quorum / cache / followed lists and issuers / allow_plain_http (docs/chain.md)."""
    nodes = table.get("nodes", [])
    if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
        raise _fail(source, p + "nodes", "must be a list of node URLs")
    nodes = [_check_url(n, source, p + "nodes", ("http", "https")) for n in nodes]
    quorum = table.get("quorum", 0)
    if isinstance(quorum, bool) or not isinstance(quorum, int) or not 0 <= quorum <= len(nodes) + 1:
        raise _fail(source, p + "quorum", f"must be 1 to the number of nodes ({len(nodes) + 1})")
    from_file = source not in ("<defaults>", "<dict>")
    cache = _str(table, "cache", source, p, "chain-cache.sqlite" if from_file else "")
    if cache and not Path(cache).is_absolute() and from_file:
        cache = str(Path(source).parent / cache)
    lists = table.get("status_lists", [])
    if not isinstance(lists, list) or not all(type(i) is int and i > 0 for i in lists):
        raise _fail(source, p + "status_lists", "must be a list of positive list ids")
    issuers = table.get("issuers", [])
    if not isinstance(issuers, list) or not all(str(i).startswith("did:ethr:") for i in issuers):
        raise _fail(source, p + "issuers", "must be a list of did:ethr issuer DIDs")
    confirmations = table.get("confirmations", 0)
    if type(confirmations) is not int or not 0 <= confirmations <= 1000:
        raise _fail(source, p + "confirmations", "must be an integer from 0 to 1000")
    plain = table.get("allow_plain_http", False)
    if not isinstance(plain, bool):
        raise _fail(source, p + "allow_plain_http", "must be true or false")
    return {
        "nodes": tuple(nodes),
        "quorum": quorum,
        "cache": cache,
        "status_lists": tuple(lists),
        "issuers": tuple(issuers),
        "allow_plain_http": plain,
        "confirmations": confirmations,
    }


def _printer(table: object, source: str) -> PrinterSettings | None:
    """``[printer]`` (docs/printer.md); absent: no printer."""
    if table is None:
        return None
    if not isinstance(table, dict):
        raise _fail(source, "printer", "must be a table")
    p = "printer."
    _take(table, source, p, {"port", "baudrate", "flow_control", "profile", "paper_width"})
    port = _str(table, "port", source, p, "")
    if not port:
        raise _fail(source, p + "port", "the serial port of the printer is required (e.g. /dev/ttyUSB0)")
    baud = table.get("baudrate", 115200)
    if baud not in (9600, 19200, 38400, 57600, 115200):
        raise _fail(source, p + "baudrate", f"must be 9600, 19200, 38400, 57600 or 115200, got {baud!r}")
    flow = _str(table, "flow_control", source, p, "none")
    if flow not in FLOW_CONTROLS:
        raise _fail(source, p + "flow_control", f"must be one of {', '.join(FLOW_CONTROLS)}, got {flow!r}")
    profile = _str(table, "profile", source, p, "TM-T88V")
    from escpos.capabilities import get_profile  # the library's own profile database

    try:
        get_profile(profile)
    except KeyError:
        raise _fail(source, p + "profile", f"unknown python-escpos profile {profile!r}") from None
    width = table.get("paper_width", 80)
    if width not in PAPER_DOTS:
        raise _fail(source, p + "paper_width", f"must be one of {sorted(PAPER_DOTS)} (mm), got {width!r}")
    return PrinterSettings(port, int(baud), flow, profile, int(width))


def _scanner(table: object, source: str) -> ScannerSettings | None:
    """``[scanner]`` (a counter's serial QR scanner, docs/printer.md); absent: no scanner."""
    if table is None:
        return None
    if not isinstance(table, dict):
        raise _fail(source, "scanner", "must be a table")
    p = "scanner."
    _take(table, source, p, {"port", "baudrate"})
    port = _str(table, "port", source, p, "")
    if not port:
        raise _fail(source, p + "port", "the serial port of the scanner is required (e.g. /dev/ttyACM0)")
    baud = table.get("baudrate", 9600)
    if baud not in (9600, 19200, 38400, 57600, 115200):
        raise _fail(source, p + "baudrate", f"must be 9600, 19200, 38400, 57600 or 115200, got {baud!r}")
    return ScannerSettings(port, int(baud))


def parse_config(data: dict[str, Any], source: str = "<dict>") -> TerminalConfig:
    """Validate a parsed TOML document; raise :class:`ConfigError` naming the offending key."""
    _take(data, source, "", {"terminal", "chain", "server", "counter", "printer", "scanner"})
    term = data.get("terminal", {})
    if not isinstance(term, dict):
        raise _fail(source, "terminal", "must be a table")
    p = "terminal."
    _take(
        term,
        source,
        p,
        {
            "mode", "id", "audience", "language", "idle_timeout", "services", "host", "port", "reader",
            "server_names", "screen_url_file", "require_clock_sync", "tls_cert", "tls_key", "tls_client_ca",
            "terminal_authentication",
        },
    )  # fmt: skip
    mode_s = _str(term, "mode", source, p, "kiosk")
    try:
        mode = Mode(mode_s)
    except ValueError:
        raise _fail(source, p + "mode", f"must be 'kiosk' or 'counter', got {mode_s!r}") from None
    terminal_id = _str(term, "id", source, p, "busan-kiosk-dev")
    if not _ID.match(terminal_id):
        raise _fail(source, p + "id", "1-64 letters, digits, '.', '_' or '-'")
    audience = _str(term, "audience", source, p, f"https://kiosk.busan.go.kr/{terminal_id}")
    if not 0 < len(audience) <= 128 or not audience.isascii() or not audience.isprintable():
        raise _fail(source, p + "audience", "1-128 printable ASCII characters (the card's audience limit)")
    language = _str(term, "language", source, p, "ko")
    if language not in LANGUAGES:
        raise _fail(source, p + "language", f"must be one of {', '.join(LANGUAGES)}, got {language!r}")
    idle = _number(term, "idle_timeout", source, p, 30, 5, 3600)
    services = term.get("services", list(DEFAULT_SERVICES))
    if (
        not isinstance(services, list)
        or not services
        or not all(isinstance(s, str) and _ID.match(s) for s in services)
        or len(set(services)) != len(services)
    ):
        raise _fail(source, p + "services", "must be a non-empty list of distinct service ids")
    host = _str(term, "host", source, p, "127.0.0.1")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise _fail(source, p + "host", f"must be an IP address or 'localhost', got {host!r}") from None
    port = term.get("port", 8080)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise _fail(source, p + "port", f"must be an integer from 0 to 65535, got {port!r}")
    reader = _str(term, "reader", source, p, "")
    names = term.get("server_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) and _HOSTNAME.match(n) for n in names):
        raise _fail(source, p + "server_names", "must be a list of host names or IP addresses")
    screen_url_file = _path(_str(term, "screen_url_file", source, p, ""), source)
    clock_sync = term.get("require_clock_sync", True)
    if not isinstance(clock_sync, bool):
        raise _fail(source, p + "require_clock_sync", "must be true or false")
    terminal_auth = term.get("terminal_authentication", True)
    if not isinstance(terminal_auth, bool):
        raise _fail(source, p + "terminal_authentication", "must be true or false")
    tls = {k: _path(_str(term, k, source, p, ""), source) for k in ("tls_cert", "tls_key", "tls_client_ca")}
    for key, value in tls.items():
        if value and not Path(value).is_file():
            raise _fail(source, p + key, f"no such file: {value}")
    if any(tls.values()) and not all(tls.values()):
        raise _fail(source, p + "tls_client_ca", "TLS needs tls_cert, tls_key and tls_client_ca together")

    chain = _chain(data.get("chain"), source)

    server = data.get("server", {})
    if not isinstance(server, dict):
        raise _fail(source, "server", "must be a table")
    _take(server, source, "server.", {"url", "terminal_key"})
    server_url = _str(server, "url", source, "server.", "")
    if server_url:
        server_url = _check_url(server_url, source, "server.url", ("http", "https"))
    terminal_key = _str(server, "terminal_key", source, "server.", "")

    counter = data.get("counter", {})
    if not isinstance(counter, dict):
        raise _fail(source, "counter", "must be a table")
    _take(counter, source, "counter.", {"clerks"})
    clerks = counter.get("clerks", {})
    if not isinstance(clerks, dict):
        raise _fail(source, "counter.clerks", "must be a table of clerk id = password hash")
    for clerk, hashed in clerks.items():
        if not _ID.match(clerk):
            raise _fail(source, f"counter.clerks.{clerk}", "bad clerk id")
        if not isinstance(hashed, str) or not _parse_hash(hashed):
            raise _fail(source, f"counter.clerks.{clerk}", "must be a hash from `kiosk clerk-password`")
    if mode is Mode.COUNTER and not server_url:
        raise _fail(source, "server.url", "a counter terminal needs the city server URL")

    secret_hex = _secret("CITYID_KIOSK_SECRET") or ""  # env or systemd credential (cityid.secrets)
    secret = bytes.fromhex(secret_hex) if re.fullmatch(r"([0-9a-fA-F]{2}){16,}", secret_hex) else None
    config = TerminalConfig(
        mode=mode,
        terminal_id=terminal_id,
        audience=audience,
        language=language,
        idle_timeout=idle,
        services=tuple(services),
        host=host,
        port=port,
        reader=reader,
        chain=chain,
        server_url=server_url,
        terminal_key=terminal_key,
        clerks=dict(clerks),
        server_names=tuple(names),
        screen_url_file=screen_url_file,
        require_clock_sync=clock_sync,
        terminal_authentication=terminal_auth,
        **tls,
        printer=_printer(data.get("printer"), source),
        scanner=_scanner(data.get("scanner"), source),
        secret_key=secret or secrets.token_bytes(32),
        source=source,
    )
    check_bind(config)
    return config


def _path(value: str, source: str) -> str:
    """A path from the file, relative to the file's folder."""
    if value and not Path(value).is_absolute() and source not in ("<defaults>", "<dict>"):
        return str(Path(source).parent / value)
    return value


def load_config(path: str | os.PathLike[str]) -> TerminalConfig:
    """Read and validate a TOML configuration file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return parse_config(data, str(p))


# --- clerk passwords (scrypt, RFC 7914) -------------------------------------------------------------

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def hash_password(password: str, salt: bytes | None = None) -> str:
    """A salted scrypt hash for the ``[counter.clerks]`` table."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def _parse_hash(hashed: str) -> tuple[int, int, int, bytes, bytes] | None:
    m = re.fullmatch(r"scrypt\$(\d+)\$(\d+)\$(\d+)\$([0-9a-f]{16,})\$([0-9a-f]{64})", hashed)
    if not m:
        return None
    n, r, p = int(m[1]), int(m[2]), int(m[3])
    if n < 2**10 or n > 2**20 or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 16:
        return None
    return n, r, p, bytes.fromhex(m[4]), bytes.fromhex(m[5])


def check_password(password: str, hashed: str) -> bool:
    """Constant-time check of a password against a :func:`hash_password` string."""
    parsed = _parse_hash(hashed)
    if parsed is None:
        return False
    n, r, p, salt, expected = parsed
    got = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(expected), maxmem=2**27)
    return hmac.compare_digest(got, expected)
