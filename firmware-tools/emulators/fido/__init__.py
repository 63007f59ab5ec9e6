"""Virtual FIDO2 (CTAP 2.1) authenticator: a transport-independent core plus PC/SC and CTAPHID transports.

* :mod:`.authenticator` — the CTAP2 command dispatcher (``Authenticator.process(request) -> response``);
* :mod:`.clientpin`, :mod:`.credmgmt`, :mod:`.largeblobs`, :mod:`.attestation` — its sub-protocols;
* :mod:`.applet` — the card-OS applet (NFCCTAP over ISO 7816-4), :mod:`.hid` — the in-process CTAPHID device.
"""
