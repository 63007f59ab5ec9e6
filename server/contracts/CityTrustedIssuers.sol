// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.24;

/// @title Trusted issuers registry: the city (root authority) accredits issuer DIDs for credential types
/// @notice Issuers are did:ethr identities, stored by address; credential types by keccak256(vct).
/// A revoked accreditation is final for that issuer and vct (a compromised issuer is never silently
/// re-trusted: accredit a new issuer DID). The root moves in two steps, never to the zero address.
contract CityTrustedIssuers {
    struct Accreditation {
        uint64 validFrom;
        uint64 validUntil;
        bool revoked;
    }

    address public root;
    address public pendingRoot;
    mapping(address => mapping(bytes32 => Accreditation)) private accreditations;

    event RootChanged(address indexed root);
    event RootProposed(address indexed root);
    event IssuerAccredited(
        address indexed issuer, bytes32 indexed vctHash, string vct, uint64 validFrom, uint64 validUntil
    );
    event AccreditationRevoked(address indexed issuer, bytes32 indexed vctHash);

    error NotRoot(address caller);
    error BadValidity(uint64 validFrom, uint64 validUntil);
    error ZeroAddress();
    error NotPendingRoot(address caller);
    error AccreditationRevokedIsFinal(address issuer, bytes32 vctHash);

    constructor() {
        root = msg.sender;
        emit RootChanged(msg.sender);
    }

    modifier onlyRoot() {
        if (msg.sender != root) revert NotRoot(msg.sender);
        _;
    }

    /// @notice Step 1 of a root transfer: name the next root (who must accept).
    function proposeRoot(address newRoot) external onlyRoot {
        if (newRoot == address(0)) revert ZeroAddress();
        pendingRoot = newRoot;
        emit RootProposed(newRoot);
    }

    /// @notice Step 2: the proposed root takes the role.
    function acceptRoot() external {
        if (msg.sender != pendingRoot) revert NotPendingRoot(msg.sender);
        root = msg.sender;
        pendingRoot = address(0);
        emit RootChanged(msg.sender);
    }

    /// @notice Accredit (or re-accredit) `issuer` for credential type `vct` during [validFrom, validUntil).
    function accredit(address issuer, string calldata vct, uint64 validFrom, uint64 validUntil) external onlyRoot {
        if (validUntil <= validFrom) revert BadValidity(validFrom, validUntil);
        if (issuer == address(0)) revert ZeroAddress();
        bytes32 vctHash = keccak256(bytes(vct));
        if (accreditations[issuer][vctHash].revoked) revert AccreditationRevokedIsFinal(issuer, vctHash);
        accreditations[issuer][vctHash] = Accreditation(validFrom, validUntil, false);
        emit IssuerAccredited(issuer, vctHash, vct, validFrom, validUntil);
    }

    function revokeAccreditation(address issuer, bytes32 vctHash) external onlyRoot {
        accreditations[issuer][vctHash].revoked = true;
        emit AccreditationRevoked(issuer, vctHash);
    }

    function accreditation(address issuer, bytes32 vctHash)
        external
        view
        returns (uint64 validFrom, uint64 validUntil, bool revoked)
    {
        Accreditation memory a = accreditations[issuer][vctHash];
        return (a.validFrom, a.validUntil, a.revoked);
    }

    function isTrusted(address issuer, bytes32 vctHash) external view returns (bool) {
        Accreditation memory a = accreditations[issuer][vctHash];
        return !a.revoked && a.validFrom <= block.timestamp && block.timestamp < a.validUntil;
    }
}
