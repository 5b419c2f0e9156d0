import { multiaddr } from '@multiformats/multiaddr'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { BULK_FRAME_BYTES, BulkServer, PARK_MS, bulkFetch, bulkPush, bulkRoute, pushTicket } from '../../src/protocol/bulk/index.ts'

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

describe('bulk channel, pushed', () => {
  const receiver = new BulkServer('127.0.0.1')
  beforeAll(async () => { await receiver.start() })
  afterAll(async () => { await receiver.stop() })
  const parts = [new Uint8Array(BULK_FRAME_BYTES + 3).map((_, i) => i & 0xff), Uint8Array.of(1, 2, 3)]
  const size = parts.reduce((n, p) => n + p.byteLength, 0)
  const joined = (targets: Uint8Array[]): Buffer => Buffer.concat(targets)

  it('takes a push whose ticket arrived first', async () => {
    const ticket = pushTicket(receiver.port, parts)
    const target = new Uint8Array(size)
    const got = receiver.receive(ticket, [target])
    expect(await bulkPush('127.0.0.1', receiver.port, ticket, parts)).toBe(size)
    await got
    expect(Buffer.compare(joined([target]), Buffer.concat(parts))).toBe(0)
  })

  it('takes a push that connected before its ticket arrived (the ticket rides a slower stream)', async () => {
    const ticket = pushTicket(receiver.port, parts)
    const target = new Uint8Array(size)
    const pushed = bulkPush('127.0.0.1', receiver.port, ticket, parts)
    // Wait until the receiver holds the early connection, then hand it the ticket.
    await vi.waitFor(() => { expect((receiver as unknown as { parked: Map<string, unknown> }).parked.size).toBe(1) })
    await receiver.receive(ticket, [target])
    await pushed
    expect(Buffer.compare(joined([target]), Buffer.concat(parts))).toBe(0)
  })

  it('refuses a pusher without the key, and the receiver says so', async () => {
    const ticket = pushTicket(receiver.port, parts)
    const got = receiver.receive(ticket, [new Uint8Array(size)], AbortSignal.timeout(20_000))
    const forged = { ...ticket, key: new Uint8Array(16) }
    await expect(bulkPush('127.0.0.1', receiver.port, forged, parts)).rejects.toThrow()
    // The forger's connection was dropped; the real push still lands.
    await bulkPush('127.0.0.1', receiver.port, ticket, parts)
    await got
  })

  it('a pull of a ticket nobody offered fails at once, not after the park time', async () => {
    const ticket = { ...pushTicket(receiver.port, parts), push: false }
    await expect(bulkFetch('127.0.0.1', ticket, [new Uint8Array(size)], AbortSignal.timeout(PARK_MS / 2))).rejects.toMatchObject({ code: 'ERR_BULK' })
  })
})

describe('bulk route', () => {
  const direct = multiaddr('/ip4/198.18.0.10/tcp/4001')
  it('the side that dialed the libp2p connection dials the bulk one', () => {
    expect(bulkRoute({ direction: 'inbound', remoteAddr: direct }, 5000)).toEqual({ mode: 'pull' })
    expect(bulkRoute({ direction: 'outbound', remoteAddr: direct }, 5000)).toEqual({ mode: 'push', host: '198.18.0.10', port: 5000 })
  })
  it('keeps bytes on the stream over a relay, or when the peer has no bulk port', () => {
    const relayed = multiaddr('/ip4/198.18.0.10/tcp/4001/p2p/12D3KooWGRUVh7FU7hUJ6NrL1DdUDoq2m9Cs8XGrYzsJdHo5MBRM/p2p-circuit')
    expect(bulkRoute({ direction: 'inbound', remoteAddr: relayed }, 5000)).toEqual({ mode: 'stream' })
    expect(bulkRoute({ direction: 'outbound', remoteAddr: direct, limits: { bytes: 1n } }, 5000)).toEqual({ mode: 'stream' })
    expect(bulkRoute({ direction: 'outbound', remoteAddr: direct }, 0)).toEqual({ mode: 'stream' })
    expect(bulkRoute(undefined, 5000)).toEqual({ mode: 'stream' })
  })
})
