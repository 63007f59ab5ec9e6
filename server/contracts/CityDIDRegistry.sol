// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.24;

/// @title Busan citizen DID registry
/// @notice ABI- and event-compatible with ERC-1056 (EthereumDIDRegistry, did:ethr), so standard did:ethr
/// resolvers read it unchanged. Differences (see docs/chain.md):
///  - owner and `changed` block share one storage slot per identity (one fresh slot per enrolled citizen);
///  - a registrar role (granted by the admin) may enroll never-touched identities in a batch, becoming their
///    owner and publishing their P-256 keys as attributes, emitting the standard events;
///  - the `*Signed` digest includes `block.chainid` (EIP-155 style replay protection across chains):
///    keccak256(0x19 0x00 registry chainId nonce identity "fnName" args) — ERC-1056 has no chain id;
///  - an account that was a registrar and has been demoted controls no identity any more (it cannot act as
///    owner, directly or by signature); the admin hands its identities to another owner (`reassignOwner`);
///  - the admin role moves in two steps (`proposeAdmin` + `acceptAdmin`), never to the zero address.
contract CityDIDRegistry {
    struct Entry {
        address owner; // 0 = the identity owns itself (ERC-1056 default)
        uint64 changed; // block number of the last change (ERC-1056 `changed`)
    }

    mapping(address => Entry) private entries;
    mapping(address => mapping(bytes32 => mapping(address => uint256))) public delegates;
    mapping(address => uint256) public nonce;

    address public admin;
    address public pendingAdmin;
    mapping(address => bool) public registrars;
    /// Accounts ever granted the registrar role (a demoted registrar stays here and controls nothing).
    mapping(address => bool) public everRegistrar;

    event DIDOwnerChanged(address indexed identity, address owner, uint256 previousChange);
    event DIDDelegateChanged(
        address indexed identity, bytes32 delegateType, address delegate, uint256 validTo, uint256 previousChange
    );
    event DIDAttributeChanged(
        address indexed identity, bytes32 name, bytes value, uint256 validTo, uint256 previousChange
    );
    event AdminChanged(address indexed admin);
    event AdminProposed(address indexed admin);
    event RegistrarChanged(address indexed registrar, bool enabled);

    error NotOwner(address identity, address caller);
    error NotAdmin(address caller);
    error NotRegistrar(address caller);
    error AlreadyClaimed(address identity, address owner);
    error BadSignature(address signer);
    error MalformedBatch(uint256 offset);
    error ZeroAddress();
    error NotPendingAdmin(address caller);
    error DemotedRegistrar(address caller);
    error NotDemoted(address owner);

    constructor() {
        admin = msg.sender;
        emit AdminChanged(msg.sender);
    }

    modifier onlyOwner(address identity, address actor) {
        _checkOwner(identity, actor);
        _;
    }

    function _checkOwner(address identity, address actor) private view {
        if (actor != identityOwner(identity)) revert NotOwner(identity, actor);
        if (everRegistrar[actor] && !registrars[actor]) revert DemotedRegistrar(actor);
    }

    modifier onlyAdmin() {
        if (msg.sender != admin) revert NotAdmin(msg.sender);
        _;
    }

    // ---- administration of the registrar role -------------------------------------------------------------

    /// @notice Step 1 of an admin transfer: name the next admin (who must accept).
    function proposeAdmin(address newAdmin) external onlyAdmin {
        if (newAdmin == address(0)) revert ZeroAddress();
        pendingAdmin = newAdmin;
        emit AdminProposed(newAdmin);
    }

    /// @notice Step 2: the proposed admin takes the role.
    function acceptAdmin() external {
        if (msg.sender != pendingAdmin) revert NotPendingAdmin(msg.sender);
        admin = msg.sender;
        pendingAdmin = address(0);
        emit AdminChanged(msg.sender);
    }

    function setRegistrar(address registrar, bool enabled) external onlyAdmin {
        if (registrar == address(0)) revert ZeroAddress();
        registrars[registrar] = enabled;
        if (enabled) everRegistrar[registrar] = true;
        emit RegistrarChanged(registrar, enabled);
    }

    /// @notice Hand an identity owned by a demoted registrar to a new owner (e.g. the current registrar).
    function reassignOwner(address identity, address newOwner) external onlyAdmin {
        if (newOwner == address(0)) revert ZeroAddress();
        address owner = identityOwner(identity);
        if (!everRegistrar[owner] || registrars[owner]) revert NotDemoted(owner);
        entries[identity].owner = newOwner;
        emit DIDOwnerChanged(identity, newOwner, _touch(identity));
    }

    // ---- ERC-1056 views --------------------------------------------------------------------------------------

    function owners(address identity) external view returns (address) {
        return entries[identity].owner;
    }

    function changed(address identity) external view returns (uint256) {
        return entries[identity].changed;
    }

    function identityOwner(address identity) public view returns (address) {
        address owner = entries[identity].owner;
        return owner != address(0) ? owner : identity;
    }

    function validDelegate(address identity, bytes32 delegateType, address delegate) external view returns (bool) {
        return delegates[identity][keccak256(abi.encode(delegateType))][delegate] > block.timestamp;
    }

    // ---- ERC-1056 writes ---------------------------------------------------------------------------------------

    function _touch(address identity) private returns (uint256 previous) {
        previous = entries[identity].changed;
        entries[identity].changed = uint64(block.number);
    }

    function _checkSignature(address identity, uint8 sigV, bytes32 sigR, bytes32 sigS, bytes32 hash)
        private
        returns (address)
    {
        address signer = ecrecover(hash, sigV, sigR, sigS);
        if (signer == address(0) || signer != identityOwner(identity)) revert BadSignature(signer);
        nonce[signer]++;
        return signer;
    }

    function _digest(address identity, bytes memory payload) private view returns (bytes32) {
        return keccak256(
            abi.encodePacked(
                bytes1(0x19), bytes1(0), this, block.chainid, nonce[identityOwner(identity)], identity, payload
            )
        );
    }

    function _changeOwner(address identity, address actor, address newOwner) private onlyOwner(identity, actor) {
        entries[identity].owner = newOwner;
        emit DIDOwnerChanged(identity, newOwner, _touch(identity));
    }

    function changeOwner(address identity, address newOwner) external {
        _changeOwner(identity, msg.sender, newOwner);
    }

    function changeOwnerSigned(address identity, uint8 sigV, bytes32 sigR, bytes32 sigS, address newOwner) external {
        bytes32 hash = _digest(identity, abi.encodePacked("changeOwner", newOwner));
        _changeOwner(identity, _checkSignature(identity, sigV, sigR, sigS, hash), newOwner);
    }

    function _addDelegate(address identity, address actor, bytes32 delegateType, address delegate, uint256 validity)
        private
        onlyOwner(identity, actor)
    {
        delegates[identity][keccak256(abi.encode(delegateType))][delegate] = block.timestamp + validity;
        emit DIDDelegateChanged(identity, delegateType, delegate, block.timestamp + validity, _touch(identity));
    }

    function addDelegate(address identity, bytes32 delegateType, address delegate, uint256 validity) external {
        _addDelegate(identity, msg.sender, delegateType, delegate, validity);
    }

    function addDelegateSigned(
        address identity,
        uint8 sigV,
        bytes32 sigR,
        bytes32 sigS,
        bytes32 delegateType,
        address delegate,
        uint256 validity
    ) external {
        bytes32 hash = _digest(identity, abi.encodePacked("addDelegate", delegateType, delegate, validity));
        _addDelegate(identity, _checkSignature(identity, sigV, sigR, sigS, hash), delegateType, delegate, validity);
    }

    function _revokeDelegate(address identity, address actor, bytes32 delegateType, address delegate)
        private
        onlyOwner(identity, actor)
    {
        delegates[identity][keccak256(abi.encode(delegateType))][delegate] = block.timestamp;
        emit DIDDelegateChanged(identity, delegateType, delegate, block.timestamp, _touch(identity));
    }

    function revokeDelegate(address identity, bytes32 delegateType, address delegate) external {
        _revokeDelegate(identity, msg.sender, delegateType, delegate);
    }

    function revokeDelegateSigned(
        address identity,
        uint8 sigV,
        bytes32 sigR,
        bytes32 sigS,
        bytes32 delegateType,
        address delegate
    ) external {
        bytes32 hash = _digest(identity, abi.encodePacked("revokeDelegate", delegateType, delegate));
        _revokeDelegate(identity, _checkSignature(identity, sigV, sigR, sigS, hash), delegateType, delegate);
    }

    function _setAttribute(address identity, address actor, bytes32 name, bytes memory value, uint256 validity)
        private
        onlyOwner(identity, actor)
    {
        emit DIDAttributeChanged(identity, name, value, block.timestamp + validity, _touch(identity));
    }

    function setAttribute(address identity, bytes32 name, bytes calldata value, uint256 validity) external {
        _setAttribute(identity, msg.sender, name, value, validity);
    }

    function setAttributeSigned(
        address identity,
        uint8 sigV,
        bytes32 sigR,
        bytes32 sigS,
        bytes32 name,
        bytes calldata value,
        uint256 validity
    ) external {
        bytes32 hash = _digest(identity, abi.encodePacked("setAttribute", name, value, validity));
        _setAttribute(identity, _checkSignature(identity, sigV, sigR, sigS, hash), name, value, validity);
    }

    function _revokeAttribute(address identity, address actor, bytes32 name, bytes memory value)
        private
        onlyOwner(identity, actor)
    {
        emit DIDAttributeChanged(identity, name, value, 0, _touch(identity));
    }

    function revokeAttribute(address identity, bytes32 name, bytes calldata value) external {
        _revokeAttribute(identity, msg.sender, name, value);
    }

    function revokeAttributeSigned(
        address identity,
        uint8 sigV,
        bytes32 sigR,
        bytes32 sigS,
        bytes32 name,
        bytes calldata value
    ) external {
        bytes32 hash = _digest(identity, abi.encodePacked("revokeAttribute", name, value));
        _revokeAttribute(identity, _checkSignature(identity, sigV, sigR, sigS, hash), name, value);
    }

    // ---- batch enrollment ------------------------------------------------------------------------------------

    /// @notice Enroll many citizens in one transaction (city registrar only).
    /// @param name attribute name for the keys, e.g. "did/pub/Multikey/sigAuth/hex"
    /// @param validity seconds each key stays valid
    /// @param packed per citizen: identity (20 bytes) || key count n (1 byte) || n * (x || y) (64 bytes each);
    ///        every key is published as the 65-byte uncompressed point 0x04 || x || y.
    /// A never-touched identity becomes owned by the caller (DIDOwnerChanged); an identity the caller already
    /// owns just gets the extra keys. Anything else reverts the whole batch.
    function enrollBatch(bytes32 name, uint256 validity, bytes calldata packed) external {
        if (!registrars[msg.sender]) revert NotRegistrar(msg.sender);
        uint256 validTo = block.timestamp + validity;
        uint256 offset = 0;
        address admin_ = admin;
        while (offset < packed.length) {
            offset = _enrollOne(name, validTo, packed, offset, admin_);
        }
    }

    function _enrollOne(bytes32 name, uint256 validTo, bytes calldata packed, uint256 offset, address admin_)
        private
        returns (uint256 next)
    {
        if (offset + 21 > packed.length) revert MalformedBatch(offset);
        address identity;
        uint256 count;
        assembly {
            let word := calldataload(add(packed.offset, offset))
            identity := shr(96, word)
            count := byte(20, word)
        }
        next = offset + 21 + count * 64;
        if (count == 0 || next > packed.length || identity == address(0)) revert MalformedBatch(offset);
        // the root's own identity (the issuer DID as deployed) is never a citizen to claim
        if (identity == admin_) revert AlreadyClaimed(identity, identity);
        uint256 previous = _claim(identity);
        bytes32 topic = DIDAttributeChanged.selector;
        assembly {
            let p := mload(0x40)
            mstore(p, name)
            mstore(add(p, 32), 0x80)
            mstore(add(p, 64), validTo)
            mstore(add(p, 96), previous)
            mstore(add(p, 128), 65)
            for { let keyAt := add(add(packed.offset, offset), 21) } lt(keyAt, add(packed.offset, next)) {
                keyAt := add(keyAt, 64)
            } {
                mstore(add(p, 224), 0)
                mstore(add(p, 160), 0x0400000000000000000000000000000000000000000000000000000000000000)
                calldatacopy(add(p, 161), keyAt, 64)
                log2(p, 256, topic, identity)
            }
        }
    }

    /// @notice Revoke many P-256 key attributes in one transaction (e.g. lost cards); caller must own each
    /// identity. `packed` is, per key: identity (20 bytes) || x || y (64 bytes); each emits the standard
    /// DIDAttributeChanged(identity, name, 0x04 || x || y, 0, previousChange) like revokeAttribute.
    function revokeKeysBatch(bytes32 name, bytes calldata packed) external {
        if (packed.length % 84 != 0) revert MalformedBatch(packed.length);
        bytes32 topic = DIDAttributeChanged.selector;
        for (uint256 offset = 0; offset < packed.length; offset += 84) {
            address identity = address(bytes20(packed[offset:offset + 20]));
            _checkOwner(identity, msg.sender);
            uint256 previous = _touch(identity);
            assembly {
                let p := mload(0x40)
                mstore(p, name)
                mstore(add(p, 32), 0x80)
                mstore(add(p, 64), 0)
                mstore(add(p, 96), previous)
                mstore(add(p, 128), 65)
                mstore(add(p, 224), 0)
                mstore(add(p, 160), 0x0400000000000000000000000000000000000000000000000000000000000000)
                calldatacopy(add(p, 161), add(add(packed.offset, offset), 20), 64)
                log2(p, 256, topic, identity)
            }
        }
    }

    /// @dev Take ownership of a never-touched identity (emitting DIDOwnerChanged) or accept one the caller
    /// already owns; returns the previous `changed` block and records this block. Equivalent Solidity:
    /// Entry e = entries[identity]; if (e.owner == 0) { require(e.changed == 0); entries[identity] =
    /// Entry(msg.sender, block.number); emit DIDOwnerChanged(identity, msg.sender, 0); } else
    /// { require(e.owner == msg.sender); e.changed = block.number; } (assembly saves ~10 % of batch gas).
    function _claim(address identity) private returns (uint256 previous) {
        bytes32 topic = DIDOwnerChanged.selector;
        address owner;
        assembly {
            mstore(0, identity)
            mstore(32, entries.slot)
            let slot := keccak256(0, 64)
            let packedEntry := sload(slot)
            owner := and(packedEntry, 0xffffffffffffffffffffffffffffffffffffffff)
            previous := and(shr(160, packedEntry), 0xffffffffffffffff)
            if iszero(owner) {
                if iszero(previous) {
                    sstore(slot, or(caller(), shl(160, number())))
                    mstore(0, caller())
                    mstore(32, 0)
                    log2(0, 64, topic, identity)
                }
            }
            if eq(owner, caller()) {
                sstore(slot, or(caller(), shl(160, number())))
            }
        }
        if (owner != msg.sender) {
            if (owner != address(0) || previous != 0) revert AlreadyClaimed(identity, owner == address(0) ? identity : owner);
        }
    }
}

