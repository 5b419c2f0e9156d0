import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { tcp } from '@libp2p/tcp'
import { lpStream } from '@libp2p/utils'
import { createLibp2p } from 'libp2p'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { silentLogger } from '../../src/node/log.ts'
import { ALLREDUCE_PROTOCOL, AllReduce, RemoteRoundError, partition } from '../../src/protocol/allreduce/index.ts'
import { OPEN_GUARD } from '../../src/protocol/peer-guard.ts'
import type { RoundExecutor, RoundMember } from '../../src/protocol/allreduce/index.ts'
import type { PeerGuard, StrikeSource } from '../../src/protocol/peer-guard.ts'
import type { Libp2p } from '@libp2p/interface'

/**
 * The allreduce protocol on four real libp2p nodes (TCP on loopback, noise,
 * yamux) with executors written here: member i returns v_i[j] = (i + 1) *
 * w[j mod P] + j, so the round's answer must equal that plain sum over the
 * members, exactly (small integers and halves, exact in float32). Vectors
 * of 10 and 11 values split unevenly among 3 members.
 */
const P = 10
const V = 11

interface Peer { libp2p: Libp2p, allreduce: AllReduce, strikes: StrikeSource[] }

const peers: Peer[] = []
const failing = new Set<number>()

function executor (me: () => number): RoundExecutor {
  return async (task, units, _from, signal) => {
    signal.throwIfAborted()
    if (failing.has(me())) throw new Error('deliberate failure in this member')
    const w = task.inputs.w?.data as Float32Array
    expect(task.params).toMatchObject({ tag: 'sum', start: units.start, end: units.end })
    const i = me()
    return { partial: { out: { dtype: 'float32', shape: [V], data: Float32Array.from({ length: V }, (_, j) => (i + 1) * (w[j % P] as number) + j) } }, computeMs: 1 }
  }
}

beforeAll(async () => {
  for (let i = 0; i < 4; i++) {
    const libp2p = await createLibp2p({ addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] }, transports: [tcp()], connectionEncrypters: [noise()], streamMuxers: [yamux()] })
    const strikes: StrikeSource[] = []
    const guard: PeerGuard = { ...OPEN_GUARD, strike: (_p, source) => { strikes.push(source) } }
    const allreduce = new AllReduce({ libp2p, log: silentLogger(), guard, execute: executor(() => i), resolve: async () => ({ tensors: {}, blobs: {} }) })
    await allreduce.start()
    peers.push({ libp2p, allreduce, strikes })
  }
  for (const a of peers) for (const b of peers) if (a !== b) await a.libp2p.dial(b.libp2p.getMultiaddrs()[0] as never)
})

afterAll(async () => {
  for (const p of peers) {
    await p.allreduce.stop()
    await p.libp2p.stop()
  }
})

const id = (i: number): string => (peers[i] as Peer).libp2p.peerId.toString()
const w = Float32Array.from({ length: P }, (_, j) => j / 2)

function members (which: number[]): RoundMember[] {
  return which.map((i, k) => ({ peer: id(i), start: k * 2, end: k * 2 + 2 }))
}

function spec (round: string): Parameters<AllReduce['runRound']>[1] {
  return { round, task: { op: 'sum', params: { tag: 'sum' } }, refs: [], blobs: [], local: { tensors: {}, blobs: {} }, w, vLength: V }
}

describe('allreduce protocol', () => {
  it('sums every member\'s vector, parts uneven, with the coordinator one of the members', async () => {
    const out = await (peers[0] as Peer).allreduce.runRound(members([0, 1, 2]), spec('r1'), AbortSignal.timeout(20_000))
    const want = Float32Array.from({ length: V }, (_, j) => [0, 1, 2].reduce((s, i) => s + (i + 1) * (w[j % P] as number) + j, 0))
    expect([...out.sum]).toEqual([...want])
    expect(partition(V, 3).map(([s, e]) => e - s)).toEqual([4, 4, 3])
    // The coordinator sent the two remote members their w parts and read their two parts of v.
    const remoteW = partition(P, 3).slice(1).reduce((n, [s, e]) => n + (e - s) * 4, 0)
    expect(out.bytesIn).toBe(partition(V, 3).slice(1).reduce((n, [s, e]) => n + (e - s) * 4, 0))
    expect(out.bytesOut).toBeGreaterThan(remoteW)
    expect(peers.every(p => p.allreduce.active === 0)).toBe(true)
  })

  it('a coordinator outside the group moves one vector each way', async () => {
    const out = await (peers[3] as Peer).allreduce.runRound(members([0, 1, 2]), spec('r2'), AbortSignal.timeout(20_000))
    expect(out.sum[0]).toBe(0 + 0 + 0)
    expect(out.bytesIn).toBe(V * 4)
    expect(out.bytesOut - P * 4).toBeLessThan(3 * 1024)
  })

  it('a member that fails fails the round naming it, and no member is left waiting', async () => {
    failing.add(2)
    try {
      const err = await (peers[0] as Peer).allreduce.runRound(members([0, 1, 2]), spec('r3'), AbortSignal.timeout(20_000)).then(() => undefined, (e: unknown) => e)
      expect(err).toBeInstanceOf(RemoteRoundError)
      expect((err as RemoteRoundError).peer).toBe(id(2))
    } finally {
      failing.delete(2)
    }
    // The others' rounds end with the coordinator's streams; run again without it.
    await expect.poll(() => peers.every(p => p.allreduce.active === 0)).toBe(true)
    const out = await (peers[0] as Peer).allreduce.runRound(members([0, 1]), spec('r3-a1'), AbortSignal.timeout(20_000))
    expect(out.sum[1]).toBe(1 * 0.5 + 1 + 2 * 0.5 + 1)
  })

  it('refuses garbage and parts from outside the group, with a strike, and keeps serving', async () => {
    const target = peers[1] as Peer
    const before = target.strikes.length
    const stream = await (peers[3] as Peer).libp2p.dialProtocol(target.libp2p.peerId, ALLREDUCE_PROTOCOL)
    const lp = lpStream(stream)
    await lp.write(Uint8Array.of(9, 1, 2, 3))
    await expect.poll(() => target.strikes.length).toBeGreaterThan(before)
    // A round of 0, 1, 2 whose members get a v part from node 3 too: node 1 refuses it.
    const running = (peers[0] as Peer).allreduce.runRound(members([0, 1, 2]), spec('r4'), AbortSignal.timeout(20_000))
    const hostile = await (peers[3] as Peer).libp2p.dialProtocol(target.libp2p.peerId, ALLREDUCE_PROTOCOL)
    const h = lpStream(hostile)
    // kind PART, then {round: "r4", kind: 2, part: 1, from: 2} as protobuf, the length, the values.
    const header = Uint8Array.of(2, 0x0a, 2, 0x72, 0x34, 0x10, 2, 0x18, 1, 0x20, 2)
    await h.write(header)
    const len = new Uint8Array(8)
    new DataView(len.buffer).setFloat64(0, 4, true)
    await h.write(len)
    await h.write(new Uint8Array(16))
    await running
    await expect.poll(() => target.strikes.filter(s => s === 'allreduce').length).toBeGreaterThanOrEqual(2)
  })

  it('a forged part that arrives before its round starts is struck when the round starts, and the round still succeeds', async () => {
    const target = peers[1] as Peer
    const before = target.strikes.filter(s => s === 'allreduce').length
    const activeBefore = target.allreduce.active
    // Node 3, outside the group, claims to be member 2 of round r5 before node 1 has its START.
    const hostile = await (peers[3] as Peer).libp2p.dialProtocol(target.libp2p.peerId, ALLREDUCE_PROTOCOL)
    const h = lpStream(hostile)
    await h.write(Uint8Array.of(2, 0x0a, 2, 0x72, 0x35, 0x10, 2, 0x18, 1, 0x20, 2))
    const len = new Uint8Array(8)
    new DataView(len.buffer).setFloat64(0, 4, true)
    await h.write(len)
    await h.write(new Uint8Array(16))
    // Held as an early part of r5.
    await expect.poll(() => target.allreduce.active).toBe(activeBefore + 1)
    const out = await (peers[0] as Peer).allreduce.runRound(members([0, 1, 2]), spec('r5'), AbortSignal.timeout(20_000))
    const want = Float32Array.from({ length: V }, (_, j) => [0, 1, 2].reduce((s, i) => s + (i + 1) * (w[j % P] as number) + j, 0))
    expect([...out.sum]).toEqual([...want])
    expect(target.strikes.filter(s => s === 'allreduce').length).toBe(before + 1)
  })
})
