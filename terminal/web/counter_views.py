"""Counter screens (clerk): sign-in, enroll a card, register a FIDO2 key, unblock a PIN, revoke, status.

Forms are described once (:data:`FORMS`) and rendered by one accessible template. Clerk passwords are
checked against salted scrypt hashes from the configuration (unknown ids against a dummy hash: same cost);
five failures lock the clerk id for a minute. Sessions and lockouts live server-side
(:mod:`terminal.web.clerk_sessions`): logout and 15 minutes idle end a session for every copy of its cookie.

Messages name the real cause (docs/ui.md §Counter, issue 15 item 4): which reader is empty or holds the
wrong kind of token, which characters a name may not contain, a city server that did not answer within
:data:`~terminal.server_client.COUNTER_TIMEOUT` (with a retry). Secrets are never echoed back into the page;
the page's script (``counter.js``) keeps what the clerk typed and clears only the fields marked
``data-clear`` (the wrong or invalid ones). Enrolling a card that already holds a citizen first shows what
will be replaced and needs the clerk's confirmation and the card's PUK; abandoning works only on an
unfinished enrollment.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Blueprint, current_app, g, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response

from cityid.errors import (
    ApplicationNotFoundError,
    BlockedPinError,
    CardRemovedError,
    CityIdError,
    NoCardError,
    PinError,
    PinNotSetError,
    PinPowerCycleError,
    ReaderError,
    WrongPinError,
)
from terminal.config import TerminalConfig, check_password, hash_password
from terminal.flows.authorization import TerminalCertificateMissingError
from terminal.flows.certificate import KST
from terminal.flows.counter import CardMismatchError
from terminal.flows.counter_card import EnrollmentFinishedError, NothingToAbandonError
from terminal.server_client import ServerError, acting_clerk
from terminal.web.backend import CardHolder, CounterBackend, Enrollment, Replacement, TokenMissingError
from terminal.web.clerk_sessions import ClerkSessions
from terminal.web.verdicts import DISTRICT_KEYS

logger = logging.getLogger(__name__)

bp = Blueprint("counter", __name__)

REVOKE_REASONS = ("lost", "revoked")  # server API values (docs/server.md)
MAX_FAILURES = 5
LOCKOUT_SECONDS = 60.0
IDLE_SECONDS = 900.0  # a clerk session ends after 15 minutes without a request
_NOT_IN_NAMES = re.compile(r"[\x00-\x1f\x7f<>]")  # markup and control characters
_CRED_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass(frozen=True, slots=True)
class Field:
    """One form field: name, label key, input type and options (all labels are catalogue keys)."""

    name: str
    label: str
    kind: str = "text"  # text, date, select, checkbox, pin, readers
    options: tuple[tuple[str, str], ...] = ()
    autocomplete: str = "off"
    hint: str | None = None
    optional: bool = False


@dataclass(frozen=True, slots=True)
class Form:
    title: str
    fields: tuple[Field, ...]
    submit: str
    intro: str | None = None
    danger: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _reader_field() -> Field:
    return Field("reader", "counter.field.reader", "readers")


FORMS: dict[str, Form] = {
    "enroll": Form(
        "counter.enroll.title",
        (
            _reader_field(),
            Field("family_name", "claim.family_name", autocomplete="off"),
            Field("given_name", "claim.given_name", autocomplete="off"),
            Field("birthdate", "claim.birthdate", "date"),
            Field("district", "claim.district", "select", tuple(DISTRICT_KEYS.items())),
            Field("resident", "claim.busan_resident", "checkbox"),
            Field("pin", "counter.field.new_pin", "pin", hint="counter.hint.pin"),
            Field("pin2", "counter.field.repeat_pin", "pin"),
            Field("puk", "counter.field.new_puk", "pin", hint="counter.hint.puk"),
            Field("puk2", "counter.field.repeat_puk", "pin"),
            Field(
                "revocation_password",
                "counter.field.revocation_password",
                "pin",
                hint="counter.hint.revocation_password",
                optional=True,
            ),
        ),
        "counter.enroll.submit",
        intro="counter.enroll.intro",
    ),
    "fido": Form(
        "counter.fido.title",
        (
            Field("reader", "counter.field.card_reader", "readers"),
            Field("card_pin", "counter.field.card_pin", "pin", hint="counter.hint.card_pin"),
            Field("key_reader", "counter.field.key_reader", "readers"),
            Field("pin", "counter.field.key_pin", "pin", hint="counter.hint.key_pin"),
        ),
        "counter.fido.submit",
        intro="counter.fido.intro",
    ),
    "unblock": Form(
        "counter.unblock.title",
        (
            _reader_field(),
            Field("puk", "counter.field.puk", "pin"),
            Field("pin", "counter.field.new_pin", "pin", hint="counter.hint.pin"),
            Field("pin2", "counter.field.repeat_pin", "pin"),
        ),
        "counter.unblock.submit",
        intro="counter.unblock.intro",
    ),
    "revoke": Form(
        "counter.revoke.title",
        (
            Field("credential_id", "counter.field.credential_id"),
            Field(
                "reason",
                "counter.field.reason",
                "select",
                tuple((r, f"revoke_reason.{r}") for r in REVOKE_REASONS),
            ),
            Field("confirm", "counter.field.confirm_revoke", "checkbox"),
        ),
        "counter.revoke.submit",
        intro="counter.revoke.intro",
        danger=True,
    ),
    "lost": Form(
        "counter.lost.title",
        (
            Field("family_name", "claim.family_name"),
            Field("given_name", "claim.given_name"),
            Field("birthdate", "claim.birthdate", "date"),
            Field("revocation_password", "counter.field.revocation_password", "pin"),
            Field("confirm", "counter.field.confirm_revoke", "checkbox"),
        ),
        "counter.revoke.submit",
        intro="counter.lost.intro",
        danger=True,
    ),
    "abandon": Form(
        "counter.abandon.title",
        (_reader_field(), Field("confirm", "counter.field.confirm_abandon", "checkbox")),
        "counter.abandon.submit",
        intro="counter.abandon.intro",
        danger=True,
    ),
    "status": Form(
        "counter.status.title",
        (Field("credential_id", "counter.field.credential_id"),),
        "counter.status.submit",
    ),
}


def _sessions() -> ClerkSessions:
    """The server-side clerk sessions (``app.config["CITYID_CLERK_DB"]``, else a SQLite file beside the
    kiosk configuration; in memory for a configuration that is not a file)."""
    store = current_app.extensions.get("cityid.clerk_sessions")
    if store is None:
        path = current_app.config.get("CITYID_CLERK_DB")
        source = _config().source
        if path is None:
            path = (
                Path(source).with_name("counter-sessions.sqlite")
                if not source.startswith("<") and Path(source).parent.is_dir()
                else ":memory:"
            )
        store = ClerkSessions(
            path,
            idle_seconds=float(current_app.config.get("CITYID_CLERK_IDLE_SECONDS", IDLE_SECONDS)),
            max_failures=MAX_FAILURES,
            lockout_seconds=LOCKOUT_SECONDS,
            **({"clock": current_app.config["CITYID_CLOCK"]} if "CITYID_CLOCK" in current_app.config else {}),
        )
        current_app.extensions["cityid.clerk_sessions"] = store
    return store


@functools.cache
def _dummy_hash() -> str:
    """Checked for unknown clerk ids, so that they cost the same scrypt as a real one."""
    return hash_password(secrets.token_urlsafe(16))


def _config() -> TerminalConfig:
    return current_app.config["CITYID"]


def _backend() -> CounterBackend:
    return current_app.extensions["cityid.counter"]


def _clerk() -> str | None:
    """The signed-in clerk: a live server-side session (not ended, not idle) of a configured clerk."""
    cached = g.get("cityid_clerk")
    if cached is not None:
        return cached or None
    clerk = _sessions().clerk(session.get("sid"))
    clerk = clerk if clerk is not None and clerk in _config().clerks else None
    g.cityid_clerk = clerk or ""
    return clerk


@bp.before_request
def _require_clerk() -> Response | None:
    if request.endpoint in ("counter.login", "counter.login_post"):
        return None
    if _clerk() is None:
        return redirect(url_for("counter.login"), 303)
    return None


@bp.get("/login")
def login() -> str:
    # ``clerk`` (the signed-in clerk, for the menu bar) stays unset: nobody is signed in on this page
    return render_template("counter_login.html", error_key=None, clerk_id="")


def check_clerk(store: ClerkSessions, clerks: dict[str, str], clerk: str, password: str) -> str | None:
    """A sign-in attempt against ``clerks`` (id → scrypt hash): None when it succeeds, else the catalogue
    key of the refusal (``counter.login.locked`` / ``counter.login.failed``); failures count in ``store``.
    Also the kiosk's staff sign-in (:mod:`terminal.web.staff_views`)."""
    if store.locked(clerk):
        return "counter.login.locked"
    hashed = clerks.get(clerk)
    # An unknown id runs scrypt too (against a dummy hash): the answer time is no oracle for the ids.
    matches = check_password(password, hashed if hashed is not None else _dummy_hash())
    ok = hashed is not None and matches
    store.record(clerk, ok)
    if not ok:
        logger.info("clerk sign-in refused")
        return "counter.login.failed"
    return None


def sign_in_attempt(
    store: ClerkSessions, clerks: dict[str, str], template: str
) -> tuple[str, tuple[str, int] | None]:
    """The posted sign-in form checked (:func:`check_clerk`): the clerk id and, when refused, the page
    ``template`` re-rendered with the reason (429 locked, 401 failed). Counter and kiosk staff sign-in."""
    clerk = request.form.get("clerk", "").strip()
    error = check_clerk(store, clerks, clerk, request.form.get("password", ""))
    if error is None:
        return clerk, None
    status = 429 if error == "counter.login.locked" else 401
    return clerk, (render_template(template, error_key=error, clerk_id=clerk), status)


@bp.post("/login")
def login_post() -> Response | tuple[str, int]:
    store = _sessions()
    clerk, refused = sign_in_attempt(store, _config().clerks, "counter_login.html")
    if refused is not None:
        return refused
    lang = session.get("lang")
    session.clear()  # new session id material: no fixation of a pre-login session
    if lang:
        session["lang"] = lang
    session["sid"] = store.start(clerk)
    logger.info("clerk %s signed in", clerk)
    return redirect(url_for("counter.home"), 303)


@bp.post("/logout")
def logout() -> Response:
    _sessions().end(session.get("sid"))  # ended server-side: a copied cookie is signed out too
    printing = current_app.extensions.get("cityid.counter_printing")
    receipt = session.get("receipt")
    if printing is not None and isinstance(receipt, dict):
        printing.forget(receipt.get("token"))  # a receipt not printed by now keeps no password
    lang = session.get("lang")
    session.clear()
    if lang:
        session["lang"] = lang
    return redirect(url_for("counter.login"), 303)


@bp.get("/")
def home() -> str:
    return render_template("counter_home.html", clerk=_clerk(), actions=tuple(FORMS))


#: A field error: a catalogue key, or a key with its parameters.
FieldError = str | tuple[str, dict[str, Any]]


def _render_form(
    name: str,
    errors: dict[str, FieldError] | None = None,
    values: dict[str, str] | None = None,
    message: str | None = None,
    message_params: dict[str, Any] | None = None,
    status: int = 200,
    *,
    clear: tuple[str, ...] = (),
    retry: bool = False,
    replace: CardHolder | None = None,
) -> tuple[str, int]:
    """The form ``name`` again. ``clear``: secret fields the page must empty (wrong or invalid ones; the
    others keep what was typed); ``retry``: offer a retry button (the server did not answer);
    ``replace``: the citizen the card holds, for the clerk's confirmation before enrolling over it."""
    readers: list[str] = []
    try:
        readers = list(_backend().readers())
    except CityIdError as exc:
        logger.warning("cannot list readers: %s", exc)
    html = render_template(
        "counter_form.html",
        clerk=_clerk(),
        action=name,
        form=FORMS[name],
        readers=readers,
        errors={k: (v, {}) if isinstance(v, str) else v for k, v in (errors or {}).items()},
        values=values or {},
        message_key=message,
        message_params=message_params or {},
        clear=set(clear) | set(errors or {}),
        retry=retry,
        replace=replace,
    )
    return html, status


@bp.get("/<any(enroll, fido, unblock, revoke, lost, abandon, status):action>")
def form(action: str) -> tuple[str, int]:
    return _render_form(action)


def _digits(value: str, lo: int, hi: int) -> bool:
    return value.isascii() and value.isdigit() and lo <= len(value) <= hi


def _name_error(value: str) -> FieldError | None:
    """Why ``value`` is not a name: its length, or the characters it may not contain (named)."""
    value = value.strip()
    if not 1 <= len(value) <= 64:
        return "counter.error.name"
    bad = sorted(set(_NOT_IN_NAMES.findall(value)))
    if bad:
        shown = " ".join(c if c.isprintable() else f"U+{ord(c):04X}" for c in bad)
        return ("counter.error.name_chars", {"chars": shown})
    return None


def _validate(action: str, f: dict[str, str]) -> dict[str, FieldError]:
    """Field errors (name → catalogue key, or key and parameters)."""
    errors: dict[str, FieldError] = {}
    if any(x.kind == "readers" for x in FORMS[action].fields) and not f.get("reader"):
        errors["reader"] = "counter.error.reader"
    if action in ("enroll", "lost"):
        for name in ("family_name", "given_name"):
            if (err := _name_error(f.get(name, ""))) is not None:
                errors[name] = err
    if action == "enroll":
        try:
            born = dt.date.fromisoformat(f.get("birthdate", ""))
            if not dt.date(1900, 1, 1) <= born <= dt.date.today():
                raise ValueError
        except ValueError:
            errors["birthdate"] = "counter.error.birthdate"
        if f.get("district") not in DISTRICT_KEYS:
            errors["district"] = "counter.error.district"
    if action in ("enroll", "unblock"):
        if not _digits(f.get("pin", ""), 6, 8):
            errors["pin"] = "counter.error.pin"
        elif f.get("pin") != f.get("pin2"):
            errors["pin2"] = "counter.error.pin_mismatch"
    if action == "enroll":
        if not _digits(f.get("puk", ""), 8, 8):
            errors["puk"] = "counter.error.puk"
        elif f.get("puk") != f.get("puk2"):
            errors["puk2"] = "counter.error.puk_mismatch"
    if action == "unblock" and not _digits(f.get("puk", ""), 8, 8):
        errors["puk"] = "counter.error.puk"
    if action == "fido":
        if not (4 <= len(f.get("pin", "")) <= 63):
            errors["pin"] = "counter.error.key_pin"
        if not _digits(f.get("card_pin", ""), 6, 8):
            errors["card_pin"] = "counter.error.pin"
        if not f.get("key_reader"):
            errors["key_reader"] = "counter.error.reader"
    chosen = f.get("revocation_password", "")
    if (action == "lost" or chosen) and not 6 <= len(chosen) <= 128:
        errors["revocation_password"] = "counter.error.revocation_password"  # noqa: S105 - an error key
    if action == "lost":
        try:
            dt.date.fromisoformat(f.get("birthdate", ""))
        except ValueError:
            errors["birthdate"] = "counter.error.birthdate"
    if action in ("revoke", "status") and not _CRED_ID.match(f.get("credential_id", "").strip()):
        errors["credential_id"] = "counter.error.credential_id"
    if action == "revoke" and f.get("reason") not in REVOKE_REASONS:
        errors["reason"] = "counter.error.reason"
    if action in ("revoke", "lost", "abandon") and f.get("confirm") != "on":
        errors["confirm"] = "counter.error.confirm"
    if action == "enroll" and f.get("replace_serial"):  # the confirmation of enrolling over a citizen
        if not _digits(f.get("current_puk", ""), 8, 8):
            errors["current_puk"] = "counter.error.puk"
        if f.get("replace_confirm") != "on":
            errors["replace_confirm"] = "counter.error.confirm"
    return errors


_SECRET_FIELDS = ("pin", "pin2", "puk", "puk2", "card_pin", "revocation_password", "current_puk")

#: Which secret field was wrong, for a ``WrongPinError`` in each form (the field the page clears).
_WRONG_FIELD = {
    ("enroll", "puk"): "current_puk",  # only the confirmation asks for a current secret
    ("unblock", "puk"): "puk",
    ("fido", "pin"): "card_pin",
    ("fido", "key_pin"): "pin",
}


@bp.post("/<any(enroll, fido, unblock, revoke, lost, abandon, status):action>")
def form_post(action: str) -> tuple[str, int]:
    f = {k: v for k, v in request.form.items() if k != "csrf_token"}
    keep = {k: v for k, v in f.items() if k not in _SECRET_FIELDS}  # secrets are never echoed back
    errors = _validate(action, f)
    replace: CardHolder | None = None
    if errors:
        if "replace_serial" in f:  # still confirming: show again what will be replaced
            replace = _holder_or_none(f)
        return _render_form(action, errors, keep, "counter.error.fix", status=400, replace=replace)
    backend = _backend()
    printing = current_app.extensions.get("cityid.counter_printing")
    # the enrollment receipt prints the revocation password the citizen chose: held server-side, no cookie
    chosen = f.get("revocation_password", "") if action == "enroll" and printing is not None else ""
    ops: dict[str, Callable[[], tuple[str, list[tuple[str, str]]]]] = {
        "enroll": lambda: _enroll(backend, f),
        "fido": lambda: _fido(backend, f),
        "unblock": lambda: _unblock(backend, f),
        "revoke": lambda: _state(
            "counter.revoke.done", backend.revoke(f["credential_id"].strip(), f["reason"])
        ),
        "lost": lambda: _lost(backend, f),
        "status": lambda: _state("counter.status.done", backend.status(f["credential_id"].strip())),
        "abandon": lambda: (
            "counter.abandon.done",
            [("counter.field.revoked", cid) for cid in backend.abandon(f["reader"])],
        ),
    }
    try:
        with acting_clerk(_clerk()):  # the clerk is named and signed in every server request
            if action == "enroll" and not f.get("replace_serial"):
                replace = backend.card_holder(f["reader"])
                if replace is not None:  # the card holds a citizen: the clerk confirms first
                    return _render_form(action, {}, keep, None, status=409, replace=replace)
            done_key, rows = ops[action]()
    except WrongPinError as exc:
        kind = _secret_kind(action, exc)
        wrong = _WRONG_FIELD.get((action, kind), "pin")
        if wrong == "current_puk":
            replace = _holder_or_none(f)
        return _render_form(
            action, {}, keep, f"counter.error.wrong_{kind}", {"n": exc.attempts_remaining}, 400,
            clear=(wrong,), replace=replace,
        )  # fmt: skip
    except PinPowerCycleError:
        return _render_form(action, {}, keep, "counter.error.power_cycle", status=409)
    except BlockedPinError as exc:
        return _render_form(
            action, {}, keep, f"counter.error.blocked_{_secret_kind(action, exc)}", status=409
        )
    except PinNotSetError:
        return _render_form(action, {}, keep, "counter.error.technical", status=409)
    except CardRemovedError:
        return _render_form(action, {}, keep, "counter.error.removed", status=409)
    except TokenMissingError as exc:
        key = {"card": "counter.error.no_card", "key": "counter.error.no_key"}[exc.role]
        if exc.wrong_kind:
            key = "counter.error.not_a_key" if exc.role == "key" else "counter.error.not_citizen_card"
        field_name = "key_reader" if exc.role == "key" else "reader"
        return _render_form(action, {}, keep, key, {"reader": exc.reader}, 409, clear=(field_name,))
    except ApplicationNotFoundError:  # e.g. a security key on the citizen-card reader
        return _render_form(action, {}, keep, "counter.error.not_citizen_card", {"reader": f.get("reader")},
                            409)  # fmt: skip
    except (NoCardError, ReaderError):
        return _render_form(action, {}, keep, "counter.error.no_card", {"reader": f.get("reader")}, 409)
    except CardMismatchError:
        return _render_form(action, {}, keep, "counter.error.card_changed", status=409)
    except EnrollmentFinishedError as exc:
        h = exc.holding
        if h.serial is None:  # a private-profile card: not named before the citizen's PIN
            return _render_form(action, {}, keep, "counter.error.abandon_finished_private", status=409)
        return _render_form(action, {}, keep, "counter.error.abandon_finished",
                            {"card": h.card_number, "did": h.did or "-"}, 409)  # fmt: skip
    except NothingToAbandonError:
        return _render_form(action, {}, keep, "counter.error.abandon_nothing", status=409)
    except KeyError:
        return _render_form(action, {}, keep, "counter.error.not_found", status=404)
    except TerminalCertificateMissingError as exc:  # no authorization root: no card is personalized
        logger.warning("counter %s refused: %s", action, exc)
        return _render_form(action, {}, keep, "counter.error.not_authorized", status=503, retry=True)
    except ServerError as exc:
        logger.warning("counter %s: city server: %s", action, exc.code)
        if exc.retryable:
            if exc.code == "timeout":
                key, status = "counter.error.server_timeout", 504
            else:
                key, status = (
                    ("counter.error.server_down" if exc.status == 0 else "counter.error.server_busy"),
                    503,
                )
            return _render_form(action, {}, keep, key, status=status, retry=True)
        return _render_form(action, {}, keep, "counter.error.technical", status=502)
    except CityIdError as exc:
        logger.warning("counter %s failed: %s", action, type(exc).__name__)
        return _render_form(action, {}, keep, "counter.error.technical", status=502)
    finally:
        f.clear()
    logger.info("clerk %s: %s done", _clerk(), action)
    receipt = None
    if action == "enroll" and printing is not None:
        # what the receipt prints: the credential id, the time and the revocation password (no personal claim)
        token = printing.hold(dict(rows)["counter.field.credential_id"], time.time(), chosen or None)
        receipt = {"token": token}
        session["receipt"] = receipt
    html = render_template("counter_result.html", clerk=_clerk(), title_key=done_key, rows=rows,
                           receipt=receipt)  # fmt: skip
    return html, 200


@bp.post("/receipt")
def receipt_post() -> tuple[str, int]:
    """Print (or reprint after a fault) the enrollment receipt of the last enrollment (docs/printer.md)."""
    printing = current_app.extensions.get("cityid.counter_printing")
    receipt = session.get("receipt")
    if printing is None or not isinstance(receipt, dict):
        return render_template("counter_result.html", clerk=_clerk(), title_key="counter.receipt.no_printer",
                               rows=[], receipt=None), 409  # fmt: skip
    held = printing.held(receipt.get("token"))
    outcome = printing.print_held(receipt.get("token"))
    if held is None or outcome is None:  # forgotten (15 min) or another counter app's token
        session.pop("receipt", None)
        return render_template("counter_result.html", clerk=_clerk(), title_key="counter.receipt.expired",
                               rows=[], receipt=None), 410  # fmt: skip
    rows = [("counter.field.credential_id", held[0])]
    title = "counter.receipt.printed" if outcome.printed else "counter.receipt.failed"
    html = render_template("counter_result.html", clerk=_clerk(), title_key=title, rows=rows,
                           receipt=receipt, print_outcome=outcome)  # fmt: skip
    return html, 200 if outcome.printed else 503


@bp.get("/scan")
def scan() -> str:
    """The last certificate scanned at this counter and its verification (terminal.web.printing)."""
    scanning = current_app.extensions.get("cityid.counter_scanning")
    last = None if scanning is None else scanning.last()
    times = ("", "")
    if last is not None and last.result.verified is not None:
        v = last.result.verified
        issued, expires = (dt.datetime.fromtimestamp(t, KST) for t in (v.issued_at, v.expires_at))
        times = (f"{issued:%Y-%m-%d %H:%M} KST", f"{expires:%Y-%m-%d %H:%M} KST")
    state = None if scanning is None else scanning.state.value  # ready / starting / unavailable
    return render_template("counter_scan.html", clerk=_clerk(), configured=scanning is not None, last=last,
                           times=times, scanner_state=state)  # fmt: skip


def _secret_kind(action: str, exc: PinError | None = None) -> str:
    if exc is not None and exc.what == "key PIN":
        return "key_pin"
    if exc is not None and exc.what == "PUK":
        return "puk"
    return "puk" if action == "unblock" else "pin"


def _holder_or_none(f: dict[str, str]) -> CardHolder | None:
    """The citizen on the card being confirmed for replacement (None: the card is gone or changed)."""
    try:
        holder = _backend().card_holder(f.get("reader", ""))
    except CityIdError:
        return None
    return holder if holder is not None and holder.serial == f.get("replace_serial") else None


def _enroll(backend: CounterBackend, f: dict[str, str]) -> tuple[str, list[tuple[str, str]]]:
    enrollment = Enrollment(
        family_name=f["family_name"].strip(),
        given_name=f["given_name"].strip(),
        birthdate=f["birthdate"],
        district=f["district"],
        resident=f.get("resident") == "on",
        pin=f["pin"],
        puk=f["puk"],
        revocation_password=f.get("revocation_password", ""),
    )
    serial = f.get("replace_serial", "")
    replace = Replacement(serial, f["current_puk"]) if serial else None
    r = backend.enroll(f["reader"], enrollment, replace)
    rows = [
        ("counter.field.credential_id", r.credential_id),
        ("counter.field.did", r.did),
        ("counter.field.status_index", str(r.status_index)),
        ("counter.field.self_check", "value.ok" if r.self_check_ok else "value.failed"),
    ]
    return "counter.enroll.done", rows


def _lost(backend: CounterBackend, f: dict[str, str]) -> tuple[str, list[tuple[str, str]]]:
    """Lost-card report by revocation password: the same answer whether or not the details match."""
    backend.report_lost(
        f["family_name"].strip(), f["given_name"].strip(), f["birthdate"], f["revocation_password"]
    )
    return "counter.lost.done", [("counter.field.lost_result", "value.lost_received")]


def _fido(backend: CounterBackend, f: dict[str, str]) -> tuple[str, list[tuple[str, str]]]:
    r = backend.register_fido(f["reader"], f["key_reader"], f["card_pin"], f["pin"])
    rows = [("counter.field.did", r.did), ("counter.field.fido_id", r.credential_id)]
    if r.citizen_credential_id:
        rows.append(("counter.field.credential_id", r.citizen_credential_id))
    return "counter.fido.done", rows


def _unblock(backend: CounterBackend, f: dict[str, str]) -> tuple[str, list[tuple[str, str]]]:
    backend.unblock_pin(f["reader"], f["puk"], f["pin"])
    return "counter.unblock.done", []


def _state(key: str, st: Any) -> tuple[str, list[tuple[str, str]]]:
    rows = [("counter.field.credential_id", st.credential_id), ("counter.field.state", f"state.{st.state}")]
    if st.did:
        rows.append(("counter.field.did", st.did))
    if st.status_index is not None:
        rows.append(("counter.field.status_index", str(st.status_index)))
    return key, rows
