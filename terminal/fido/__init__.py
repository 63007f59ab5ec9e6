"""FIDO2 security keys at the terminal: discovery (PC/SC + USB HID), sessions and flows.

Layers (web → flows → sessions → cityid core): :mod:`.device` reaches a key (CTAP over ISO 7816 on any
:class:`cityid.apdu.SmartCardConnection`, or python-fido2's HID/PC/SC devices), :mod:`.discovery` finds keys
and reports them as card events, :mod:`.session` holds :class:`FidoSession` (register, authenticate, PIN,
credentials, large blobs) and :class:`FidoVerifier` (single-use challenges, WebAuthn verification).
"""
