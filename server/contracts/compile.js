#!/usr/bin/env node
// Compile server/contracts/*.sol with the pinned solc-js (package.json) and write one artifact per contract
// (ABI, bytecode, compiler version + settings, source sha256) as deterministic JSON.
//   node server/contracts/compile.js [OUT_DIR]     (default: cityid/chain/artifacts)
'use strict'
const fs = require('fs')
const path = require('path')
const crypto = require('crypto')
const solc = require('solc')

// EVM target "london": no PUSH0 (shanghai) or MCOPY/TSTORE (cancun), so the bytecode runs on geth forks
// such as Metadium that lag behind Ethereum mainnet forks. See docs/chain.md.
const SETTINGS = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: 'london',
  viaIR: false,
  metadata: { bytecodeHash: 'ipfs' },
  outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object'] } },
}

function main() {
  const srcDir = __dirname
  const outDir = path.resolve(process.argv[2] || path.join(srcDir, '..', '..', 'cityid', 'chain', 'artifacts'))
  const files = fs.readdirSync(srcDir).filter((f) => f.endsWith('.sol')).sort()
  const sources = {}
  for (const f of files) sources[f] = { content: fs.readFileSync(path.join(srcDir, f), 'utf8') }
  const input = { language: 'Solidity', sources, settings: SETTINGS }
  const output = JSON.parse(solc.compile(JSON.stringify(input)))
  const errors = (output.errors || []).filter((e) => e.severity === 'error')
  for (const e of output.errors || []) process.stderr.write(e.formattedMessage + '\n')
  if (errors.length) process.exit(1)
  fs.mkdirSync(outDir, { recursive: true })
  for (const f of files) {
    for (const [name, c] of Object.entries(output.contracts[f])) {
      const artifact = {
        contractName: name,
        sourceName: f,
        sourceSha256: crypto.createHash('sha256').update(sources[f].content).digest('hex'),
        compiler: { name: 'solc-js', version: solc.version(), settings: SETTINGS },
        abi: c.abi,
        bytecode: '0x' + c.evm.bytecode.object,
        deployedBytecode: '0x' + c.evm.deployedBytecode.object,
      }
      fs.writeFileSync(path.join(outDir, name + '.json'), JSON.stringify(artifact, null, 2) + '\n')
      process.stdout.write(`${name}: ${c.evm.deployedBytecode.object.length / 2} bytes\n`)
    }
  }
}

main()
