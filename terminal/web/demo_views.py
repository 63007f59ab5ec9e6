"""The demo panel (``kiosk demo`` only): tap and remove each demo citizen's virtual card."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from flask import Blueprint, Response, current_app, redirect, render_template, request

bp = Blueprint("demo", __name__)


@dataclass(frozen=True, slots=True)
class DemoCitizen:
    """A demo citizen (fictional data) and the PIN printed for the demo."""

    id: str
    name: str  # fictional, e.g. "Kim Minsu"
    pin: str
    kind: str = "card"  # "card" or "fido"
    age: int | None = None
    district: str = ""  # catalogue key (district.*)
    notes: tuple[str, ...] = ()  # catalogue keys (demo.note.*)


class DemoPanel(Protocol):
    def citizens(self) -> Sequence[DemoCitizen]: ...

    def tapped(self) -> str | None:
        """Id of the citizen whose card is on the kiosk reader now."""
        ...

    def tap(self, citizen_id: str) -> None: ...

    def remove(self) -> None: ...

    def new_blank_card(self) -> None:
        """Put a fresh blank card in the counter's reader (for enrollment at the counter screen)."""
        ...


def _panel() -> DemoPanel:
    return current_app.extensions["cityid.demo"]


@bp.get("/")
def panel() -> str:
    return render_template("demo.html", citizens=_panel().citizens(), tapped=_panel().tapped())


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
