"""The server's side of the chain: it alone writes (docs/chain.md).

- :mod:`.gateway` the port :class:`server.service` depends on, on top of :mod:`.registrar`
- :mod:`.registrar` the registrar's write API (enrollment batches, status bits, issuer key, deployment)
- :mod:`.writer` the transaction sender (nonces, padded gas, safe retries); :mod:`.accounts` its key
"""
