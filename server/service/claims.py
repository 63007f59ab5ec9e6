"""The counter's claims: exact field set, birthdate and types checked; age flags derived, never trusted.

Claims live only in memory while a credential is signed (docs/server.md §Privacy): error messages never
echo a claim value.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from cityid import credential as vc
from server.service.errors import ValidationError

#: Claims the counter sends; age_over_19/65 are derived by the server from the birthdate at issuance.
INPUT_CLAIMS = ("family_name", "given_name", "birthdate", "district", "busan_resident", "card_number")


def validate_claims(claims: object, today: dt.date) -> dict[str, Any]:
    """Check the counter's claims object; return it unchanged when it is acceptable."""
    if not isinstance(claims, dict):
        raise ValidationError("claims must be an object")
    missing = [k for k in INPUT_CLAIMS if k not in claims]
    extra = [k for k in claims if k not in INPUT_CLAIMS]
    if missing or extra:
        raise ValidationError(
            "claims must be exactly "
            + ", ".join(INPUT_CLAIMS)
            + (f" (missing {', '.join(missing)})" if missing else "")
            + (f" (unexpected {', '.join(sorted(map(str, extra)))})" if extra else "")
        )
    citizen_claims(claims, today)
    return claims


def citizen_claims(claims: dict[str, Any], as_of: dt.date) -> vc.CitizenClaims:
    """The credential's claim set as of ``as_of`` (age flags derived from the birthdate)."""
    bd = claims["birthdate"]
    try:
        birthdate = dt.date.fromisoformat(bd) if isinstance(bd, str) and len(bd) == 10 else None
    except ValueError:
        birthdate = None
    if birthdate is None or birthdate > as_of:
        raise ValidationError("invalid claims: birthdate must be a past date YYYY-MM-DD")
    if not isinstance(claims["busan_resident"], bool):
        raise ValidationError("invalid claims: busan_resident must be a boolean")
    try:
        out = vc.CitizenClaims.derive(
            claims["family_name"],
            claims["given_name"],
            birthdate,
            claims["district"],
            claims["busan_resident"],
            claims["card_number"],
            as_of,
        )
        out.validate()
    except (vc.CredentialError, TypeError, AttributeError) as exc:
        # Never echo a claim value (errors end up in terminal logs): drop quoted parts.
        raise ValidationError(
            "invalid claims: " + re.sub(r"'[^']*'|\"[^\"]*\"", "(value)", str(exc))
        ) from exc
    return out
