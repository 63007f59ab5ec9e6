// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.24;

/// @title Credential status registry: issuer-owned status lists, 2 bits per credential index
/// @notice Values follow the IETF Token Status List: 0 valid, 1 revoked (final), 2 suspended; 3 is reserved.
/// 128 entries share one storage word (entry i lives in word i / 128 at bit 2 * (i % 128)). Every batch
/// emits ONE StatusWordsChanged event carrying the new value of each word it touched, so a sync cache can
/// replicate the lists word by word (see docs/chain.md). A list changes owner in two steps
/// (`proposeListOwner` + `acceptListOwner`), never to the zero address.
contract CityStatusRegistry {
    uint8 public constant VALID = 0;
    uint8 public constant REVOKED = 1;
    uint8 public constant SUSPENDED = 2;

    uint256 public listCount;
    mapping(uint256 => address) public listOwner;
    mapping(uint256 => address) public pendingListOwner;
    mapping(uint256 => mapping(uint256 => uint256)) private words;

    event ListCreated(uint256 indexed listId, address indexed owner);
    event ListOwnerChanged(uint256 indexed listId, address indexed owner);
    event ListOwnerProposed(uint256 indexed listId, address indexed owner);
    event StatusWordsChanged(uint256 indexed listId, uint256[] wordIndexes, uint256[] words);

    error NotListOwner(uint256 listId, address caller);
    error BadStatus(uint8 status);
    error RevokedIsFinal(uint256 listId, uint256 index);
    error ZeroAddress();
    error NotPendingListOwner(uint256 listId, address caller);

    modifier onlyListOwner(uint256 listId) {
        if (listOwner[listId] != msg.sender) revert NotListOwner(listId, msg.sender);
        _;
    }

    /// @notice Create a new list owned by the caller (list ids start at 1).
    function createList() external returns (uint256 listId) {
        listId = ++listCount;
        listOwner[listId] = msg.sender;
        emit ListCreated(listId, msg.sender);
    }

    /// @notice Step 1 of a list transfer: name the next owner (who must accept).
    function proposeListOwner(uint256 listId, address newOwner) external onlyListOwner(listId) {
        if (newOwner == address(0)) revert ZeroAddress();
        pendingListOwner[listId] = newOwner;
        emit ListOwnerProposed(listId, newOwner);
    }

    /// @notice Step 2: the proposed owner takes the list.
    function acceptListOwner(uint256 listId) external {
        if (msg.sender != pendingListOwner[listId]) revert NotPendingListOwner(listId, msg.sender);
        listOwner[listId] = msg.sender;
        pendingListOwner[listId] = address(0);
        emit ListOwnerChanged(listId, msg.sender);
    }

    /// @notice Set `status` for every index (any order; sorted indexes touch each word once).
    /// Setting REVOKED on a revoked entry is a no-op; moving a revoked entry elsewhere reverts.
    function setStatus(uint256 listId, uint256[] calldata indexes, uint8 status) external onlyListOwner(listId) {
        if (status > SUSPENDED) revert BadStatus(status);
        uint256[] memory touched = new uint256[](indexes.length);
        uint256[] memory values = new uint256[](indexes.length);
        uint256 count = 0;
        mapping(uint256 => uint256) storage list = words[listId];
        uint256 current = type(uint256).max;
        uint256 word = 0;
        for (uint256 i = 0; i < indexes.length; i++) {
            uint256 index = indexes[i];
            uint256 w = index >> 7;
            if (w != current) {
                if (count != 0) {
                    list[current] = word;
                    values[count - 1] = word;
                }
                current = w;
                word = list[w];
                touched[count] = w;
                count++;
            }
            word = _put(word, listId, index, status);
        }
        if (count != 0) {
            list[current] = word;
            values[count - 1] = word;
        }
        assembly {
            mstore(touched, count)
            mstore(values, count)
        }
        emit StatusWordsChanged(listId, touched, values);
    }

    function _put(uint256 word, uint256 listId, uint256 index, uint8 status) private pure returns (uint256) {
        uint256 shift = (index & 127) << 1;
        if ((word >> shift) & 3 == REVOKED && status != REVOKED) revert RevokedIsFinal(listId, index);
        return (word & ~(uint256(3) << shift)) | (uint256(status) << shift);
    }

    function statusOf(uint256 listId, uint256 index) external view returns (uint8) {
        return uint8((words[listId][index >> 7] >> ((index & 127) << 1)) & 3);
    }

    function statusesOf(uint256 listId, uint256[] calldata indexes) external view returns (uint8[] memory out) {
        out = new uint8[](indexes.length);
        mapping(uint256 => uint256) storage list = words[listId];
        for (uint256 i = 0; i < indexes.length; i++) {
            out[i] = uint8((list[indexes[i] >> 7] >> ((indexes[i] & 127) << 1)) & 3);
        }
    }

    function statusWords(uint256 listId, uint256[] calldata wordIndexes) external view returns (uint256[] memory out) {
        out = new uint256[](wordIndexes.length);
        for (uint256 i = 0; i < wordIndexes.length; i++) {
            out[i] = words[listId][wordIndexes[i]];
        }
    }
}
