"""The chain layer shared by server and terminal (see docs/chain.md).

- :mod:`.rpc` the node handle (web3 + raw checked reads); :mod:`.provider` bounded HTTP provider; :mod:`.errors`; :mod:`.embedded` web3 EthereumTesterProvider
- :mod:`.network` network config; :mod:`.contracts` artifacts + web3 contracts, events, reverts; :mod:`.bindings` typed wrappers
- :mod:`.writer` transaction sender; :mod:`.registrar` the server's write API
- :mod:`.resolver` did:ethr resolver; :mod:`.view` one-round-trip verifier reads; :mod:`.sync` kiosk cache
"""
