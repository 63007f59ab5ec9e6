"""LiveChainView: every chain fact one verification needs in ONE JSON-RPC round trip (cold path).

One JSON-RPC batch (JSON-RPC 2.0 §6) carries two requests:
1. ``eth_call`` of Multicall ``aggregate3``: block number + timestamp, the credential's status entry and
   the issuer's accreditation for the vct — all evaluated at the same block;
2. ``eth_getLogs`` of the DID registry for the issuer's and the holder's identities (ERC-1056 attributes
   live only in events), replayed by :func:`~cityid.chain.resolver.build_document` like a did:ethr resolver.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from cityid.chain.bindings import Multicall, StatusRegistry, TrustedIssuers
from cityid.chain.errors import ChainError
from cityid.chain.network import NetworkConfig, check_network, checksum
from cityid.chain.resolver import address_of, build_document, did_logs_filter, history_from_logs, p256_keys
from cityid.chain.rpc import RpcClient
from cityid.chain.view import CredentialStatus, StatusRef, VerificationFacts


class StatusListMismatchError(ChainError):
    """The credential's status list is not the configured registry on this chain (fail closed)."""


def check_status_ref(network: NetworkConfig, ref: StatusRef) -> None:
    """The status uri must name this network's chain id and status registry."""
    registry = network.address("status_registry")
    if ref.chain_id != network.chain_id or checksum(ref.registry) != registry:
        raise StatusListMismatchError(
            f"status list {ref.uri} is not the status registry eip155:{network.chain_id}:{registry}"
        )


def trusted_now(valid_from: int, valid_until: int, revoked: bool, now: float) -> bool:
    """Accreditation rule of CityTrustedIssuers.isTrusted, evaluated at ``now``."""
    return not revoked and valid_from <= now < valid_until


class LiveChainView:
    """:class:`cityid.chain.view.ChainView` reading the node directly (1 round trip per verification)."""

    def __init__(
        self, client: RpcClient, network: NetworkConfig, clock: Callable[[], float] = time.time
    ) -> None:
        self.client = client
        self.network = network.require_complete()
        self.clock = clock
        self.multicall = Multicall(client, network.address("multicall"))
        self.status = StatusRegistry(client, network.address("status_registry"))
        self.issuers = TrustedIssuers(client, network.address("trusted_issuers"))

    def check(self) -> int:
        """Confirm the node serves this network (chain id, contract code); call once at start-up."""
        return check_network(self.client, self.network)

    def verification_facts(
        self, issuer_did: str, holder_did: str, vct: str, status: StatusRef
    ) -> VerificationFacts:
        check_status_ref(self.network, status)
        issuer = address_of(self.network, issuer_did)
        holder = address_of(self.network, holder_did)
        calls = [self.status.status_call(status.list_id, status.index),
                 self.issuers.accreditation_call(issuer, vct)]
        before = self.client.round_trips
        raw_call, raw_logs = self.client.batch([
            self.multicall.aggregate_request(calls),
            ("eth_getLogs", [did_logs_filter(self.network, [issuer, holder])]),
        ])
        block, _ts, (status_out, accreditation) = self.multicall.decode_aggregate(raw_call, calls)
        now = self.clock()
        value = int(status_out[0])
        if value > CredentialStatus.SUSPENDED:
            raise ChainError(f"status entry has the reserved value {value}")
        keys = {}
        for did, address in ((issuer_did, issuer), (holder_did, holder)):
            history = history_from_logs(raw_logs, address)
            built = build_document(did, address, history, self.network.chain_id, int(now))
            keys[did] = () if built.deactivated else p256_keys(built.document)
        valid_from, valid_until, revoked = accreditation
        return VerificationFacts(
            issuer_keys=keys[issuer_did],
            issuer_trusted=trusted_now(int(valid_from), int(valid_until), bool(revoked), now),
            holder_keys=keys[holder_did],
            status=CredentialStatus(value),
            block_number=block,
            synced_at=now,
            round_trips=self.client.round_trips - before,
        )
