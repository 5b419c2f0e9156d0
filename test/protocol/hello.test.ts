import { describe, expect, it } from 'vitest'
import { HintsCodec, MAX_HELLO_HINTS } from '../../src/protocol/hello/index.ts'

const hint = (i: number): { id: Uint8Array, addr: Uint8Array } => ({ id: new Uint8Array(38).fill(i), addr: new Uint8Array(8).fill(i) })

describe('hello hints', () => {
  it('round-trips up to MAX_HELLO_HINTS peers', () => {
    const peers = Array.from({ length: MAX_HELLO_HINTS }, (_, i) => hint(i))
    const back = HintsCodec.decode(HintsCodec.encode({ peers }))
    expect(back.peers.map(p => [...p.id])).toEqual(peers.map(p => [...p.id]))
  })

  it('refuses more hints than allowed, and ids or addresses past their bound, as protocol errors', () => {
    const many = HintsCodec.encode({ peers: Array.from({ length: MAX_HELLO_HINTS }, (_, i) => hint(i)) })
    // Append one more repeated field by hand: the encoder would not write it, a hostile peer would.
    const extra = HintsCodec.encode({ peers: [hint(99)] })
    expect(() => HintsCodec.decode(new Uint8Array([...many, ...extra]))).toThrow(expect.objectContaining({ name: 'ProtocolError' }))
    const bigId = HintsCodec.encode({ peers: [{ id: new Uint8Array(65), addr: new Uint8Array(4) }] })
    expect(() => HintsCodec.decode(bigId)).toThrow(expect.objectContaining({ name: 'ProtocolError' }))
    expect(() => HintsCodec.decode(new Uint8Array([0x0a, 0xff, 0x01]))).toThrow(expect.objectContaining({ name: 'ProtocolError' }))
  })
})
