"""Solidity sources of the city contracts (compiled by compile.js; see docs/chain.md)."""
