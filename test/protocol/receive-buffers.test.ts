import { describe, expect, it } from 'vitest'
import { ReceiveBuffers } from '../../src/protocol/receive-buffers.ts'
import { allocateTensors } from '../../src/protocol/tensor-frames.ts'
import { DEFAULT_WIRE_LIMITS } from '../../src/protocol/limits.ts'

const MiB = 1024 * 1024

describe('ReceiveBuffers', () => {
  it('hands a released buffer to the next take of about its size, and makes a new one while it is held', () => {
    const pool = new ReceiveBuffers()
    const a = pool.take(5 * MiB + 3)
    expect(a.buffer.byteLength).toBe(6 * MiB)
    const b = pool.take(5 * MiB)
    expect(b.buffer).not.toBe(a.buffer)
    a.release()
    a.release()
    expect(pool.idleByteCount).toBe(6 * MiB)
    const c = pool.take(4 * MiB)
    expect(c.buffer).toBe(a.buffer)
    expect(pool.counters).toEqual({ allocated: 2, reused: 1 })
    // A small request does not take a buffer many times its size.
    b.release()
    expect(pool.take(100).buffer.byteLength).toBe(MiB)
  })

  it('keeps at most maxIdleBytes idle (the oldest go first) and lets buffers idle past maxIdleMs go', () => {
    let now = 0
    const pool = new ReceiveBuffers({ maxIdleBytes: 5 * MiB, maxIdleMs: 1000, now: () => now })
    const leases = [pool.take(2 * MiB), pool.take(2 * MiB), pool.take(2 * MiB)]
    const first = leases[0]?.buffer
    for (const l of leases) l.release()
    expect(pool.idleByteCount).toBe(4 * MiB)
    expect(pool.take(2 * MiB).buffer).not.toBe(first)
    now = 2000
    expect(pool.take(2 * MiB).buffer.byteLength).toBe(2 * MiB)
    expect(pool.idleByteCount).toBe(0)
    expect(pool.counters.allocated).toBe(4)
  })

  it('cuts a shard\'s tensors from one shared buffer, end to end, and gives it back on release', () => {
    const pool = new ReceiveBuffers()
    const descs = [{ name: 'x', dtype: 'float32', shape: [3, 5] }, { name: 'i', dtype: 'int32', shape: [7] }]
    const { tensors, targets, bytes, release } = allocateTensors(descs, DEFAULT_WIRE_LIMITS, 'test', pool)
    expect(bytes).toBe(88)
    const x = tensors.x?.data as Float32Array
    const i = tensors.i?.data as Int32Array
    expect(x.buffer).toBe(i.buffer)
    expect(x.buffer instanceof SharedArrayBuffer).toBe(true)
    expect([x.byteOffset, x.length, i.byteOffset, i.length]).toEqual([0, 15, 60, 7])
    expect(targets.map(t => [t.byteOffset, t.byteLength])).toEqual([[0, 60], [60, 28]])
    release()
    expect(pool.idleByteCount).toBe(MiB)
    // Without a pool: fresh, separate buffers, and a release that does nothing.
    const plain = allocateTensors(descs, DEFAULT_WIRE_LIMITS, 'test')
    expect(plain.tensors.x?.data.buffer).not.toBe(plain.tensors.i?.data.buffer)
    plain.release()
  })
})
