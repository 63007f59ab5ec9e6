"""From a verified presentation to what the citizen reads: the service's decision in plain words.

The verifier says whether the presentation is genuine (and names the failed check); the service decides
on the disclosed claims: a benefit check needs Busan residency and age over 65, a residence confirmation
needs residency and shows the name and district.

"Your credential is not valid" and "this kiosk cannot check right now" are different screens: a failed chain
check (facts unavailable, stale, or not provable) is the kiosk's problem, never the citizen's (issue 10).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from terminal.web.backend import VerdictView

#: Romanized district (the credential's ``district`` value) → catalogue key of its display name.
DISTRICT_KEYS: dict[str, str] = {
    "Jung-gu": "district.jung",
    "Seo-gu": "district.seo",
    "Dong-gu": "district.dong",
    "Yeongdo-gu": "district.yeongdo",
    "Busanjin-gu": "district.busanjin",
    "Dongnae-gu": "district.dongnae",
    "Nam-gu": "district.nam",
    "Buk-gu": "district.buk",
    "Haeundae-gu": "district.haeundae",
    "Saha-gu": "district.saha",
    "Geumjeong-gu": "district.geumjeong",
    "Gangseo-gu": "district.gangseo",
    "Yeonje-gu": "district.yeonje",
    "Suyeong-gu": "district.suyeong",
    "Sasang-gu": "district.sasang",
    "Gijang-gun": "district.gijang",
}

#: Verifier reasons that mean "the kiosk could not check", not "the credential is not valid".
CANNOT_CHECK_REASONS = frozenset({"verdict.reason.chain"})

#: Verifier reasons that mean "this card itself can no longer be used": the verdict says so in plain words
#: (heading key, next-step key: where to go, what to bring) and offers no other service (issue 15).
CARD_NOT_USABLE: dict[str, tuple[str, str]] = {
    "verdict.reason.revoked": ("verdict.card_revoked", "next.revoked"),
    "verdict.reason.holder_key": ("verdict.card_revoked", "next.revoked"),
    "verdict.reason.suspended": ("verdict.card_suspended", "next.suspended"),
    "verdict.reason.expired": ("verdict.card_expired", "next.expired"),
}


def outcome_and_next_step(view: VerdictView) -> tuple[str, str | None]:
    """The verdict heading to show and the next step (None: other services may still be offered)."""
    if not view.ok and view.reason in CARD_NOT_USABLE:
        return CARD_NOT_USABLE[view.reason]
    return view.outcome, None


#: Claims each built-in service needs (kept in step with terminal.flows.kiosk service declarations).
SERVICE_CLAIMS: dict[str, tuple[str, ...]] = {
    "benefit-check": ("busan_resident", "age_over_65"),
    "residence": ("family_name", "given_name", "district", "busan_resident"),
}


def _yes_no(value: Any) -> str:
    return "value.yes" if value is True else "value.no"


def view_for(service_id: str, verified: bool, reason: str | None, claims: Mapping[str, Any]) -> VerdictView:
    """The verdict screen for ``service_id`` (``reason``: the verifier's catalogue key when not verified).

    An accepted verdict carries ``printable``: the service's claims that were disclosed, nothing else.
    """
    view = _view(service_id, verified, reason, claims)
    if not view.ok or service_id not in SERVICE_CLAIMS:
        return view
    printable = tuple((k, claims[k]) for k in SERVICE_CLAIMS[service_id] if k in claims)
    return replace(view, printable=printable)


def _view(service_id: str, verified: bool, reason: str | None, claims: Mapping[str, Any]) -> VerdictView:
    if not verified:
        if reason in CANNOT_CHECK_REASONS:
            return VerdictView(False, "verdict.cannot_check", "reason.cannot_check")
        return VerdictView(False, "verdict.failed", reason or "reason.other")
    resident = claims.get("busan_resident") is True
    if service_id == "benefit-check":
        over65 = claims.get("age_over_65") is True
        facts = (("claim.busan_resident", _yes_no(resident)), ("claim.age_over_65", _yes_no(over65)))
        if not resident:
            return VerdictView(False, "verdict.not_eligible", "reason.not_resident", facts)
        if not over65:
            return VerdictView(False, "verdict.not_eligible", "reason.not_over_65", facts)
        return VerdictView(True, "verdict.eligible", None, facts)
    if service_id == "residence":
        district = str(claims.get("district", ""))
        facts = (
            ("claim.family_name", str(claims.get("family_name", ""))),
            ("claim.given_name", str(claims.get("given_name", ""))),
            ("claim.district", DISTRICT_KEYS.get(district, district)),
            ("claim.busan_resident", _yes_no(resident)),
        )
        if not resident:
            return VerdictView(False, "verdict.not_confirmed", "reason.not_resident", facts)
        return VerdictView(True, "verdict.confirmed", None, facts)
    return VerdictView(True, "verdict.ok")
