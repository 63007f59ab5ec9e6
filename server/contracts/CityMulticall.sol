// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.24;

/// @title Read batching with the Multicall3 ABI subset the chain layer uses
/// @notice Same `aggregate3` / `getBlockNumber` / `getCurrentBlockTimestamp` ABI as the widely deployed
/// Multicall3, so production networks may point the config at an existing Multicall3 instead.
/// Unlike Multicall3, every inner call is a STATICCALL: this contract can only read, so nobody can act
/// through it as an identity, list owner or role holder (docs/chain.md §Roles).
contract CityMulticall {
    struct Call3 {
        address target;
        bool allowFailure;
        bytes callData;
    }

    struct Result {
        bool success;
        bytes returnData;
    }

    error CallFailed(uint256 index);

    function aggregate3(Call3[] calldata calls) external payable returns (Result[] memory results) {
        results = new Result[](calls.length);
        for (uint256 i = 0; i < calls.length; i++) {
            (bool ok, bytes memory data) = calls[i].target.staticcall(calls[i].callData);
            if (!ok && !calls[i].allowFailure) revert CallFailed(i);
            results[i] = Result(ok, data);
        }
    }

    function getBlockNumber() external view returns (uint256) {
        return block.number;
    }

    function getCurrentBlockTimestamp() external view returns (uint256) {
        return block.timestamp;
    }
}
