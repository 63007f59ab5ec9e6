"""authenticatorCredentialManagement: metadata, enumeration, delete, update user (CTAP 2.1 §6.8).

Sub-commands that start something need a pinUvAuthParam over ``subCommand || CBOR(subCommandParams)`` made
with a token holding the ``cm`` permission; the ``…GetNext…`` sub-commands continue the enumeration started
by the previous command and are unauthenticated (§6.8.3–§6.8.4).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from fido2.ctap2.credman import CredentialManagement as _Fido2CredMan

from emulators.fido.clientpin import PERMISSION, pin_protocol
from emulators.fido.credstore import Credential
from emulators.fido.ctap import ERR, CredMgmtParam, Params, encode_cbor, fail

if TYPE_CHECKING:
    from emulators.fido.authenticator import Authenticator

logger = logging.getLogger(__name__)

SUB = _Fido2CredMan.CMD
SUBPARAM = _Fido2CredMan.PARAM
RESULT = _Fido2CredMan.RESULT

_AUTHENTICATED = (
    SUB.GET_CREDS_METADATA, SUB.ENUMERATE_RPS_BEGIN, SUB.ENUMERATE_CREDS_BEGIN, SUB.DELETE_CREDENTIAL,
    SUB.UPDATE_USER_INFO,
)


class CredentialManagement:
    """The credential-management command of one :class:`Authenticator`."""

    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth
        self._rps: list[Credential] = []
        self._creds: list[Credential] = []

    def clear(self) -> None:
        """Forget an enumeration in progress (another command came in between)."""
        self._rps = []
        self._creds = []

    def _authenticate(self, p: Params, sub: int, raw_params: Any, rp_id: str | None) -> None:
        param = p.bytes_(CredMgmtParam.PIN_UV_AUTH_PARAM)
        if param is None:
            raise fail(ERR.PUAT_REQUIRED)
        protocol = pin_protocol(p.uint(CredMgmtParam.PIN_UV_AUTH_PROTOCOL))
        message = bytes((sub,)) + (encode_cbor(raw_params) if raw_params is not None else b"")
        self.auth.pin.verify_token(protocol, param, message, PERMISSION.CREDENTIAL_MGMT, None)
        bound = self.auth.pin.token.rp_id
        if bound is not None and bound != rp_id:
            raise fail(ERR.PIN_AUTH_INVALID)  # an RP-bound token manages only that RP (§6.8.2)

    def process(self, p: Params) -> dict[int, Any] | None:
        sub = p.uint(CredMgmtParam.SUB_COMMAND, required=True)
        raw_params = p.raw_map(CredMgmtParam.SUB_COMMAND_PARAMS)
        sp = Params(raw_params)
        creds = self.auth.creds
        if sub not in _AUTHENTICATED and sub not in (SUB.ENUMERATE_RPS_NEXT, SUB.ENUMERATE_CREDS_NEXT):
            raise fail(ERR.INVALID_SUBCOMMAND)

        if sub == SUB.ENUMERATE_RPS_NEXT:
            if not self._rps:
                raise fail(ERR.NOT_ALLOWED)
            return self._rp_entry(self._rps.pop(0))
        if sub == SUB.ENUMERATE_CREDS_NEXT:
            if not self._creds:
                raise fail(ERR.NOT_ALLOWED)
            return self._cred_entry(self._creds.pop(0))
        self.clear()

        if sub == SUB.GET_CREDS_METADATA:
            self._authenticate(p, sub, raw_params, None)
            return {
                RESULT.EXISTING_CRED_COUNT: len(creds.all()),
                RESULT.MAX_REMAINING_COUNT: creds.remaining(),
            }

        if sub == SUB.ENUMERATE_RPS_BEGIN:
            self._authenticate(p, sub, raw_params, None)
            by_rp: dict[bytes, Credential] = {}
            for cred in sorted(creds.all(), key=lambda c: c.created):
                by_rp.setdefault(cred.rp_id_hash, cred)
            rps = list(by_rp.values())
            if not rps:
                raise fail(ERR.NO_CREDENTIALS)
            result = self._rp_entry(rps[0])
            result[RESULT.TOTAL_RPS] = len(rps)
            self._rps = rps[1:]
            return result

        if sub == SUB.ENUMERATE_CREDS_BEGIN:
            rp_id_hash = sp.bytes_(SUBPARAM.RP_ID_HASH, required=True) or b""
            matching = creds.for_rp(rp_id_hash)
            self._authenticate(p, sub, raw_params, matching[0].rp_id if matching else None)
            if not matching:
                raise fail(ERR.NO_CREDENTIALS)
            result = self._cred_entry(matching[0])
            result[RESULT.TOTAL_CREDENTIALS] = len(matching)
            self._creds = matching[1:]
            return result

        cred_id = self._descriptor_id(sp)
        target = creds.find(cred_id)
        self._authenticate(p, sub, raw_params, target.rp_id if target else None)
        if target is None:
            raise fail(ERR.NO_CREDENTIALS)
        if sub == SUB.DELETE_CREDENTIAL:
            creds.delete(cred_id)
            logger.info("discoverable credential deleted")
            return None
        # UPDATE_USER_INFO
        user = sp.map(SUBPARAM.USER, required=True)
        assert user is not None
        user_id = user.bytes_("id", required=True)
        if user_id != (target.user or {}).get("id"):
            raise fail(ERR.INVALID_PARAMETER)
        entity: dict[str, Any] = {"id": user_id}
        for key in ("name", "displayName"):
            value = user.text(key)
            if value:
                entity[key] = value
        creds.update_user(cred_id, entity)
        return None

    @staticmethod
    def _descriptor_id(sp: Params) -> bytes:
        desc = sp.map(SUBPARAM.CREDENTIAL_ID, required=True)
        assert desc is not None
        desc.text("type", required=True)
        return desc.bytes_("id", required=True) or b""

    @staticmethod
    def _rp_entry(cred: Credential) -> dict[int, Any]:
        rp: dict[str, Any] = {"id": cred.rp_id or ""}
        if cred.rp_name:
            rp["name"] = cred.rp_name
        return {RESULT.RP: rp, RESULT.RP_ID_HASH: cred.rp_id_hash}

    def _cred_entry(self, cred: Credential) -> dict[int, Any]:
        result: dict[int, Any] = {
            RESULT.USER: cred.user or {},
            RESULT.CREDENTIAL_ID: {"id": cred.cred_id, "type": "public-key"},
            RESULT.PUBLIC_KEY: dict(self.auth.vault.public_key(cred)),
            RESULT.CRED_PROTECT: int(cred.cred_protect),
        }
        if cred.large_blob_key:
            result[RESULT.LARGE_BLOB_KEY] = cred.large_blob_key
        return result
