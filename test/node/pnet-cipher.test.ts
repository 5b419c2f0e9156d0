import { execFileSync } from 'node:child_process'
import { createRequire } from 'node:module'
import { describe, expect, it } from 'vitest'
import { installPnetCipherFix } from '../../src/node/access/index.ts'

const require = createRequire(import.meta.url)
const XSALSA20 = require.resolve('xsalsa20')

/** The scenario that killed a relay: one large message on one connection, then many small ones on two. */
const SCENARIO = `
const x = require(process.argv[1])
const a = x(Buffer.alloc(24, 1), Buffer.alloc(32, 2)), b = x(Buffer.alloc(24, 3), Buffer.alloc(32, 2))
a.update(Buffer.alloc(1 << 20))
for (let i = 0; i < 5000; i++) { b.update(Buffer.alloc(100)); a.update(Buffer.alloc(100)) }
console.log('survived')
`

/** Keystream bytes from an untouched xsalsa20 in a fresh process, one instance, inputs it can hold. */
function reference (nonceByte: number, bytes: number): Buffer {
  const out = execFileSync(process.execPath, ['-e', `
const x = require(process.argv[1])
process.stdout.write(Buffer.from(x(Buffer.alloc(24, ${nonceByte}), Buffer.alloc(32, 2)).update(Buffer.alloc(${bytes}))))
`, XSALSA20], { maxBuffer: 64 * 1024 * 1024 })
  return out
}

describe('the pnet cipher fix', () => {
  it('xsalsa20 as shipped dies in the relay scenario (what the fix is for)', () => {
    let failed = ''
    try {
      execFileSync(process.execPath, ['-e', SCENARIO, XSALSA20], { stdio: ['ignore', 'pipe', 'pipe'] })
    } catch (err) {
      failed = String((err as { stderr?: Buffer }).stderr)
    }
    // If a new xsalsa20 fixes this itself, this test says so and the fix can go.
    expect(failed).toMatch(/Maximum memory size exceeded/)
  })

  it('with the fix, the same scenario runs, and the keystream is byte for byte the unpatched one however the input is cut', () => {
    expect(installPnetCipherFix()).toBe(true)
    const x = require('xsalsa20') as (n: Uint8Array, k: Uint8Array) => { update: (b: Uint8Array) => Uint8Array }
    const a = x(Buffer.alloc(24, 1), Buffer.alloc(32, 2))
    const b = x(Buffer.alloc(24, 3), Buffer.alloc(32, 2))
    const bigOut = Buffer.from(a.update(Buffer.alloc(1 << 20)))
    const smallA: Buffer[] = []
    const smallB: Buffer[] = []
    for (let i = 0; i < 5000; i++) {
      smallB.push(Buffer.from(b.update(Buffer.alloc(100))))
      smallA.push(Buffer.from(a.update(Buffer.alloc(100))))
    }
    // a: 1 MiB, then 5000 x 100 bytes; b: 5000 x 100 bytes. An odd cut (100 is not a 64-byte block) tests the carry-over.
    const refA = reference(1, (1 << 20) + 500_000)
    const refB = reference(3, 500_000)
    expect(Buffer.compare(Buffer.concat([bigOut, ...smallA]), refA)).toBe(0)
    expect(Buffer.compare(Buffer.concat(smallB), refB)).toBe(0)
  })
})
