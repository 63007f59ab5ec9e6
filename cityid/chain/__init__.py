"""The chain layer shared by server and terminal (see docs/chain.md).

- :mod:`.rpc` JSON-RPC client + typed errors (:mod:`.errors`); :mod:`.embedded` in-process py-evm node
- :mod:`.network` network config; :mod:`.abi` artifacts + ABI codec; :mod:`.bindings` typed contract wrappers
- :mod:`.writer` transaction sender; :mod:`.registrar` the server's write API
- :mod:`.resolver` did:ethr resolver; :mod:`.view` one-round-trip verifier reads; :mod:`.sync` kiosk cache
"""
