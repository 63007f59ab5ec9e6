"""Names of the verification checks and their plain-words reasons (catalogue keys, Korean and English).

The web layer shows ``Verdict.reason`` through its catalogue (``terminal/web/i18n``); :data:`MESSAGES` holds
the text of every key so logs, the CLI and tests can render it without the web layer.
"""

from __future__ import annotations

from enum import StrEnum


class CheckName(StrEnum):
    """Every check of the kiosk verification pipeline (docs/credential-format.md §Verification)."""

    SIZE = "size"  # presentation within max_bytes
    FORMAT = "format"  # SD-JWT / JWS / JSON / claim structure
    TYPE = "type"  # typ dc+sd-jwt, alg ES256, vct = the citizen vct, key-binding typ
    EXPIRY = "expiry"  # exp (and nbf/iat of the issuer JWT)
    AUDIENCE = "audience"  # KB aud = this kiosk (FIDO: rpIdHash and origin)
    FRESHNESS = "freshness"  # KB iat within the window
    SD_HASH = "sd_hash"  # KB sd_hash covers exactly the presented SD-JWT
    DISCLOSURES = "disclosures"  # every disclosure matches a digest the issuer signed
    CHAIN = "chain"  # chain facts available and within the staleness bound
    ISSUER_SIGNATURE = "issuer_signature"  # issuer JWT signed by a key of the iss DID
    ISSUER_TRUSTED = "issuer_trusted"  # iss accredited for this vct
    STATUS = "status"  # not revoked / suspended
    HOLDER_KEY = "holder_key"  # cnf key is an active key of the sub DID
    KEY_BINDING = "key_binding"  # KB-JWT / WebAuthn assertion signature by the cnf key
    USER_VERIFICATION = "user_verification"  # FIDO: UV flag (PIN or biometrics on the key)
    NONCE = "nonce"  # nonce issued by this kiosk, for this service, not used before, not expired
    CLAIMS = "claims"  # the claims the service needs were disclosed


#: Catalogue key → {"en": text, "ko": text}. Keys are ``verdict.ok`` and ``verdict.reason.<reason>``.
MESSAGES: dict[str, dict[str, str]] = {
    "verdict.ok": {"en": "Verified.", "ko": "확인되었습니다."},
    "verdict.reason.size": {
        "en": "The presentation is too large to be genuine.",
        "ko": "제시된 자료가 너무 커서 유효하지 않습니다.",
    },
    "verdict.reason.format": {
        "en": "The presentation is malformed.",
        "ko": "제시된 자료의 형식이 올바르지 않습니다.",
    },
    "verdict.reason.type": {
        "en": "This is not a Busan citizen credential.",
        "ko": "부산 시민 증명서가 아닙니다.",
    },
    "verdict.reason.expired": {"en": "The credential has expired.", "ko": "증명서의 유효기간이 지났습니다."},
    "verdict.reason.not_yet_valid": {
        "en": "The credential is not valid yet.",
        "ko": "증명서가 아직 유효하지 않습니다.",
    },
    "verdict.reason.audience": {
        "en": "The presentation was made for another terminal.",
        "ko": "다른 단말기를 위해 만들어진 제시 자료입니다.",
    },
    "verdict.reason.freshness": {
        "en": "The presentation is not fresh: its time is outside the allowed window.",
        "ko": "제시 시각이 허용 범위를 벗어났습니다.",
    },
    "verdict.reason.sd_hash": {
        "en": "The presentation was altered after the card signed it.",
        "ko": "카드가 서명한 뒤 제시 자료가 변경되었습니다.",
    },
    "verdict.reason.disclosures": {
        "en": "A disclosed detail does not match what the issuer signed.",
        "ko": "공개된 정보가 발급기관이 서명한 내용과 일치하지 않습니다.",
    },
    "verdict.reason.chain": {
        "en": "The credential's status cannot be confirmed right now (registry data unavailable or too old).",
        "ko": "지금은 증명서 상태를 확인할 수 없습니다 (등록부 정보가 없거나 오래되었습니다).",
    },
    "verdict.reason.issuer_signature": {
        "en": "The credential was not signed by the issuer it names.",
        "ko": "증명서가 표시된 발급기관의 서명을 받지 않았습니다.",
    },
    "verdict.reason.issuer_trusted": {
        "en": "The issuer is not accredited to issue this kind of credential.",
        "ko": "발급기관이 이 종류의 증명서를 발급할 자격이 없습니다.",
    },
    "verdict.reason.revoked": {"en": "The credential has been revoked.", "ko": "폐지된 증명서입니다."},
    "verdict.reason.suspended": {"en": "The credential is suspended.", "ko": "효력이 정지된 증명서입니다."},
    "verdict.reason.holder_key": {
        "en": "This card's key is no longer registered for the citizen (revoked or replaced).",
        "ko": "이 카드의 키가 더 이상 시민에게 등록되어 있지 않습니다 (폐지 또는 교체).",
    },
    "verdict.reason.key_binding": {
        "en": "The presentation was not signed by the card or key the credential belongs to.",
        "ko": "증명서가 발급된 카드나 보안키가 서명하지 않았습니다.",
    },
    "verdict.reason.user_verification": {
        "en": "The security key did not verify the citizen (PIN or fingerprint).",
        "ko": "보안키가 시민 본인 확인(PIN 또는 지문)을 하지 않았습니다.",
    },
    "verdict.reason.nonce": {
        "en": "This presentation was already used, or its request expired.",
        "ko": "이미 사용되었거나 요청 시간이 만료된 제시 자료입니다.",
    },
    "verdict.reason.claims": {
        "en": "The card did not disclose the details this service needs.",
        "ko": "이 서비스에 필요한 정보가 공개되지 않았습니다.",
    },
}


def message(key: str, language: str = "en") -> str:
    """The text of ``key`` in ``language`` ("en" or "ko"); the key itself if unknown."""
    return MESSAGES.get(key, {}).get(language, key)
