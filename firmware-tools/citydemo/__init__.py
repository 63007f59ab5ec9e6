"""The whole-system demo: the composition root (emulators + city server + terminal). Nothing imports it."""
