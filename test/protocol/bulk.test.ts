import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { BULK_FRAME_BYTES, BulkServer, bulkFetch } from '../../src/protocol/bulk/index.ts'

describe('bulk channel', () => {
  const server = new BulkServer('127.0.0.1')
  beforeAll(async () => { await server.start() })
  afterAll(async () => { await server.stop() })

  const bytes = (n: number, seed: number): Uint8Array => {
    const b = new Uint8Array(n)
    for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff
    return b
  }
  const concat = (list: Uint8Array[]): Uint8Array => {
    const out = new Uint8Array(list.reduce((n, p) => n + p.byteLength, 0))
    let off = 0
    for (const p of list) { out.set(p, off); off += p.byteLength }
    return out
  }

  it('moves parts of any size into targets of other sizes, intact', async () => {
    const parts = [bytes(BULK_FRAME_BYTES * 2 + 5, 1), bytes(7, 2), bytes(BULK_FRAME_BYTES - 1, 3)]
    const all = concat(parts)
    const targets = [new Uint8Array(100), new Uint8Array(all.byteLength - 100)]
    await bulkFetch('127.0.0.1', server.offer(parts), targets)
    expect(Buffer.compare(concat(targets), all)).toBe(0)
  })

  it('moves nothing, and says so', async () => {
    await bulkFetch('127.0.0.1', server.offer([]), [])
  })

  it('serves a ticket once', async () => {
    const ticket = server.offer([bytes(10, 4)])
    await bulkFetch('127.0.0.1', ticket, [new Uint8Array(10)])
    await expect(bulkFetch('127.0.0.1', ticket, [new Uint8Array(10)])).rejects.toThrow()
  })

  it('refuses a client without the key', async () => {
    const ticket = server.offer([bytes(10, 5)])
    await expect(bulkFetch('127.0.0.1', { ...ticket, key: new Uint8Array(16) }, [new Uint8Array(10)])).rejects.toMatchObject({ code: 'ERR_BULK' })
  })

  it('refuses a transfer whose size is not what the ticket says', async () => {
    const ticket = server.offer([bytes(10, 6)])
    // The receiver expects a final frame at 12 bytes; the sender sealed it at 10.
    await expect(bulkFetch('127.0.0.1', { ...ticket, bytes: 12 }, [new Uint8Array(12)])).rejects.toMatchObject({ code: expect.stringMatching(/^ERR_BULK/) })
  })
})
