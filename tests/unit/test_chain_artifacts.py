"""The committed contract artifacts are what the pinned solc-js makes of the committed Solidity
(docs/chain.md §Compiler and EVM target): regenerate with `city-server chain compile`."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from server.chain_cli import ARTIFACTS, CONTRACTS, compile_contracts


def test_artifacts_match_their_sources() -> None:
    sources = sorted(CONTRACTS.glob("*.sol"))
    assert sources
    for sol in sources:
        artifact = json.loads((ARTIFACTS / f"{sol.stem}.json").read_text())
        assert artifact["sourceSha256"] == hashlib.sha256(sol.read_bytes()).hexdigest(), (
            f"{sol.name} changed: run `city-server chain compile`"
        )


@pytest.mark.skipif(shutil.which("node") is None, reason="node (solc-js) not installed")
def test_compile_is_reproducible(tmp_path) -> None:  # type: ignore[no-untyped-def]
    compile_contracts(tmp_path)
    for built in sorted(tmp_path.glob("*.json")):
        assert built.read_bytes() == (ARTIFACTS / built.name).read_bytes(), built.name
