"""The demo panel (``kiosk demo`` only): put any virtual card or key on any reader — the kiosk's, the
counter's card reader, the counter's key reader — or take it out (docs/ui.md §Demo panel)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from flask import Blueprint, abort, current_app, redirect, render_template, request
from werkzeug.wrappers import Response

bp = Blueprint("demo", __name__)


@dataclass(frozen=True, slots=True)
class DemoCitizen:
    """A demo citizen (fictional data) and the PIN printed for the demo."""

    id: str
    name: str  # fictional, e.g. "Kim Minsu"
    pin: str
    kind: str = "card"  # "card", "fido", "blank" (a new card) or "new_key" (a new security key)
    age: int | None = None
    district: str = ""  # catalogue key (district.*)
    notes: tuple[str, ...] = ()  # catalogue keys (demo.note.*)
    where: str | None = None  # the reader id it is on (DemoReader.id), None: on the desk
    number: int = 0  # new cards and keys: their number in the panel
    puk: str = ""


@dataclass(frozen=True, slots=True)
class DemoReader:
    """One of the demo's readers: ``id`` (kiosk, counter, key), its reader name, what is on it."""

    id: str
    name: str
    token: str | None


class DemoPanel(Protocol):
    def citizens(self) -> Sequence[DemoCitizen]: ...

    def tapped(self) -> str | None:
        """Id of the citizen whose card is on the kiosk reader now."""
        ...

    def tap(self, citizen_id: str) -> None: ...

    def remove(self) -> None: ...

    def new_blank_card(self) -> str:
        """Put a fresh blank card in the counter's reader (for enrollment at the counter screen)."""
        ...


@runtime_checkable
class DemoReaderPanel(Protocol):
    """A demo panel with several readers: any token on any reader (optional; else kiosk taps only)."""

    def readers(self) -> Sequence[DemoReader]: ...

    def put(self, token: str, reader: str) -> None:
        """Put ``token`` on ``reader`` (KeyError: unknown token or reader)."""
        ...

    def take(self, reader: str) -> None:
        """Take whatever is on ``reader`` off it (KeyError: unknown reader)."""
        ...

    def new_key(self) -> str:
        """A fresh FIDO2 security key (no PIN) on the counter's key reader."""
        ...


@runtime_checkable
class DemoPrinterPanel(Protocol):
    """A demo panel with a virtual receipt printer (optional: the panel shows receipts when it has one)."""

    def receipts(self) -> int:
        """How many receipts the virtual printer has cut."""
        ...

    def receipt_png(self, index: int) -> bytes:
        """Receipt ``index`` (0 = first) as a PNG (IndexError: none)."""
        ...

    def printer_state(self) -> str | None:
        """The printer's state (``printer.state.*`` key), None if no printer."""
        ...


def _panel() -> DemoPanel:
    return current_app.extensions["cityid.demo"]


@bp.get("/")
def panel() -> str:
    p = _panel()
    printer = p if isinstance(p, DemoPrinterPanel) else None  # the virtual printer (None: no printer)
    count = printer.receipts() if printer is not None else None
    state = printer.printer_state() if printer is not None else None
    readers = p.readers() if isinstance(p, DemoReaderPanel) else []
    return render_template("demo.html", citizens=p.citizens(), tapped=p.tapped(), receipts=count,
                           printer_state=state, readers=readers)  # fmt: skip


@bp.get("/receipts/<int:index>.png")
def receipt(index: int) -> Response:
    """Receipt ``index`` (1 = first printed) of the virtual printer, rendered from its ESC/POS stream."""
    p = _panel()
    if not isinstance(p, DemoPrinterPanel) or index < 1:
        abort(404)
    try:
        png = p.receipt_png(index - 1)
    except IndexError:
        abort(404)
    return Response(png, mimetype="image/png", headers={"Cache-Control": "no-store"})


@bp.post("/tap")
def tap() -> Response:
    citizen = request.form.get("citizen", "")
    if citizen in {c.id for c in _panel().citizens()}:
        _panel().tap(citizen)
    return redirect("/demo/", 303)


@bp.post("/remove")
def remove() -> Response:
    _panel().remove()
    return redirect("/demo/", 303)


@bp.post("/blank")
def blank() -> Response:
    _panel().new_blank_card()
    return redirect("/demo/", 303)


def _reader_panel() -> DemoReaderPanel:
    p = _panel()
    if not isinstance(p, DemoReaderPanel):
        abort(404)
    return p


@bp.post("/put")
def put() -> Response:
    """Put a token on a reader (``token``, ``reader`` form fields)."""
    try:
        _reader_panel().put(request.form.get("token", ""), request.form.get("reader", ""))
    except KeyError:
        abort(400)
    return redirect("/demo/", 303)


@bp.post("/take")
def take() -> Response:
    """Take the token off a reader (``reader`` form field)."""
    try:
        _reader_panel().take(request.form.get("reader", ""))
    except KeyError:
        abort(400)
    return redirect("/demo/", 303)


@bp.post("/new-key")
def new_key() -> Response:
    """A fresh security key on the counter's key reader."""
    _reader_panel().new_key()
    return redirect("/demo/", 303)
