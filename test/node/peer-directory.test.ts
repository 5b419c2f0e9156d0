import { describe, expect, it } from 'vitest'
import { PeerDirectory } from '../../src/node/peer-directory.ts'
import type { PeerCapacity } from '../../src/protocol/capacity/index.ts'

function capacity (peerId: string, seq: number): PeerCapacity {
  return { peerId, version: 1, seq, timestampMs: Date.now(), backend: 'wasm', cores: 2, memTotalBytes: 1, memFreeBytes: 1, gflops: 10, slots: 2, busy: 0, queued: 0, operators: ['matmul'], addrs: [], bulkPort: 0, meanGapMs: 0, intervalMs: 0 }
}

describe('peer directory', () => {
  it('emits join, update and leave, and expires peers by the monotonic clock', () => {
    let now = 1000
    const dir = new PeerDirectory({ expiryMs: 6000, now: () => now })
    const events: string[] = []
    dir.addEventListener('peer:join', (e) => events.push(`join ${e.detail.capacity.peerId}`))
    dir.addEventListener('peer:update', (e) => events.push(`update ${e.detail.capacity.peerId}`))
    dir.addEventListener('peer:leave', (e) => events.push(`leave ${e.detail.peerId} ${e.detail.reason}`))

    dir.upsert(capacity('a', 1))
    dir.upsert(capacity('b', 1))
    now += 4000
    dir.upsert(capacity('a', 2))
    expect(dir.lastSeq('a')).toBe(2)
    now += 2500 // b is 6.5 s old, a 2.5 s
    dir.sweep()
    expect(dir.list().map(e => e.capacity.peerId)).toEqual(['a'])
    now += 3600 // a is 6.1 s old
    dir.sweep()
    expect(dir.size).toBe(0)
    expect(events).toEqual(['join a', 'join b', 'update a', 'leave b expired', 'leave a expired'])
  })

  it('keeps a peer exactly at the expiry and drops it just past', () => {
    let now = 0
    const dir = new PeerDirectory({ expiryMs: 100, now: () => now })
    dir.upsert(capacity('a', 1))
    now = 100
    dir.sweep()
    expect(dir.has('a')).toBe(true)
    now = 101
    dir.sweep()
    expect(dir.has('a')).toBe(false)
  })
})
