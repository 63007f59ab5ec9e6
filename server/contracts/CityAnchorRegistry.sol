// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.24;

/// @title Anchor registry: Merkle roots of batches of document hashes
/// @notice Tree (docs/chain.md): leaf = keccak256(0x00 || documentHash); node = keccak256(0x01 || min(a,b) ||
/// max(a,b)) (sorted pairs, so a proof is just the list of siblings); an odd node is carried up unchanged.
contract CityAnchorRegistry {
    struct Anchor {
        uint40 timestamp;
        uint40 blockNumber;
        address anchorer;
    }

    address public admin;
    address public pendingAdmin;
    mapping(address => bool) public anchorers;
    mapping(bytes32 => Anchor) private anchors;

    event AdminChanged(address indexed admin);
    event AdminProposed(address indexed admin);
    event AnchorerChanged(address indexed anchorer, bool enabled);
    event Anchored(bytes32 indexed root, address indexed anchorer, uint256 leafCount);

    error NotAdmin(address caller);
    error NotAnchorer(address caller);
    error AlreadyAnchored(bytes32 root);
    error ZeroAddress();
    error NotPendingAdmin(address caller);

    constructor() {
        admin = msg.sender;
        anchorers[msg.sender] = true;
        emit AdminChanged(msg.sender);
        emit AnchorerChanged(msg.sender, true);
    }

    modifier onlyAdmin() {
        if (msg.sender != admin) revert NotAdmin(msg.sender);
        _;
    }

    /// @notice Step 1 of an admin transfer: name the next admin (who must accept); never the zero address.
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

    function setAnchorer(address anchorer, bool enabled) external onlyAdmin {
        if (anchorer == address(0)) revert ZeroAddress();
        anchorers[anchorer] = enabled;
        emit AnchorerChanged(anchorer, enabled);
    }

    function anchor(bytes32 root, uint256 leafCount) external {
        if (!anchorers[msg.sender]) revert NotAnchorer(msg.sender);
        if (anchors[root].blockNumber != 0) revert AlreadyAnchored(root);
        anchors[root] = Anchor(uint40(block.timestamp), uint40(block.number), msg.sender);
        emit Anchored(root, msg.sender, leafCount);
    }

    function anchorOf(bytes32 root) external view returns (uint256 timestamp, uint256 blockNumber, address anchorer) {
        Anchor memory a = anchors[root];
        return (a.timestamp, a.blockNumber, a.anchorer);
    }

    function leafHash(bytes32 documentHash) public pure returns (bytes32) {
        return keccak256(abi.encodePacked(bytes1(0x00), documentHash));
    }

    function computeRoot(bytes32 documentHash, bytes32[] calldata proof) public pure returns (bytes32 node) {
        node = leafHash(documentHash);
        for (uint256 i = 0; i < proof.length; i++) {
            bytes32 s = proof[i];
            node = node < s
                ? keccak256(abi.encodePacked(bytes1(0x01), node, s))
                : keccak256(abi.encodePacked(bytes1(0x01), s, node));
        }
    }

    /// @notice True when `root` is anchored and `proof` links `documentHash` to it.
    function verifyProof(bytes32 root, bytes32 documentHash, bytes32[] calldata proof) external view returns (bool) {
        return anchors[root].blockNumber != 0 && computeRoot(documentHash, proof) == root;
    }
}
