"""The chain layer shared by server and terminal (see docs/chain.md).

- :mod:`.rpc` the node handle (web3 + raw checked reads); :mod:`.provider` the bounded HTTP provider;
  :mod:`.errors` typed errors; :mod:`.embedded` web3's EthereumTesterProvider in process
- :mod:`.network` network config; :mod:`.contracts` artifacts, web3 contracts, events, reverts;
  :mod:`.bindings` typed contract wrappers
- :mod:`.writer` transaction sender; :mod:`.registrar` the server's write API
- :mod:`.resolver` did:ethr resolver; :mod:`.view` one-round-trip verifier reads; :mod:`.sync` kiosk cache
"""
