"""Device emulators: the virtual citizen card (card OS, PIV + citizen applets) and the virtual FIDO2
authenticator (PC/SC applet + in-process CTAPHID). They stand on :mod:`cityid` alone."""
