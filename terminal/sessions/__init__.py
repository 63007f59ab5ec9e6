"""Applet sessions (one class per applet, verbs as methods) built on the shared ``cityid`` core."""
