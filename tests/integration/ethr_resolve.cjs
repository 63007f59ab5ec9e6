#!/usr/bin/env node
// Resolve DIDs with the STANDARD did:ethr resolver (ethr-did-resolver + did-resolver, pinned in package.json)
// pointed at our registry; prints {did: resolutionResult} as JSON for tests/integration/test_chain_*.py.
//   node tests/integration/ethr_resolve.cjs RPC_URL REGISTRY NETWORK_NAME CHAIN_ID DID...
//   ETHR_NOW=<unix seconds> fixes the resolver's clock (key validity is judged against wall-clock time).
'use strict'
const fixedNow = Number(process.env.ETHR_NOW || 0) * 1000
if (fixedNow) {
  const RealDate = Date
  global.Date = class extends RealDate {
    constructor(...args) {
      if (args.length === 0) super(fixedNow)
      else super(...args)
    }
    static now() {
      return fixedNow
    }
  }
}
const { Resolver } = require('did-resolver')
const { getResolver } = require('ethr-did-resolver')

async function main() {
  const [rpcUrl, registry, name, chainId, ...dids] = process.argv.slice(2)
  const resolver = new Resolver(getResolver({ networks: [{ name, chainId: BigInt(chainId), rpcUrl, registry }] }))
  const out = {}
  for (const did of dids) out[did] = await resolver.resolve(did)
  process.stdout.write(JSON.stringify(out, (_k, v) => (typeof v === 'bigint' ? v.toString() : v)))
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack ? e.stack : e) + '\n')
  process.exit(1)
})
