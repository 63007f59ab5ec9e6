"""The card emulator: card OS, persistent state, transports and the PIV and citizen applets."""
