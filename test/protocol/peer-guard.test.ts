import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { lpStream, streamPair } from '@libp2p/utils'
import { mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { beforeAll, describe, expect, it } from 'vitest'
import { PeerLimits } from '../../src/node/access/peer-limits.ts'
import { BlobStore, cidOf } from '../../src/node/blob-store.ts'
import { PeerOverLimitError } from '../../src/node/jobs/job-manager.ts'
import { silentLogger } from '../../src/node/log.ts'
import { ContentIndex, JobShares } from '../../src/node/shared-content.ts'
import { BidRequestCodec, RATE_LIMITED_REASON, bidOverStream, handleBidStream } from '../../src/protocol/bid/index.ts'
import { BLOB_NOT_HERE, BlobAnswerCodec, BlobRequestCodec, blobOverStream, handleBlobStream } from '../../src/protocol/blob/index.ts'
import { COLOCATION_WHITELIST, GRAYLIST_THRESHOLD, CAPACITY_TOPIC, SubnetSet, capacityScoreParams, capacityScoreThresholds } from '../../src/protocol/capacity/index.ts'
import { CHUNK_BYTES, DEFAULT_WIRE_LIMITS } from '../../src/protocol/limits.ts'
import { isMalformed } from '../../src/protocol/peer-guard.ts'
import { ShardHeaderCodec, ResultHeaderCodec, handleShardStream, shardOverStream } from '../../src/protocol/shard/index.ts'
import { asyncCodeOf } from '../helpers/codes.ts'
import { LimitExceededError, ProtocolError } from '../../src/errors.ts'
import type { BidAnswer, BidRequest } from '../../src/protocol/bid/index.ts'
import type { PeerId } from '@libp2p/interface'

const log = silentLogger()
let peer: PeerId
let other: PeerId

beforeAll(async () => {
  peer = peerIdFromPrivateKey(await generateKeyPair('Ed25519'))
  other = peerIdFromPrivateKey(await generateKeyPair('Ed25519'))
})

const request: BidRequest = { jobId: 'job-1', op: 'map', units: 10, flopsPerUnit: 1e6, bytesInPerUnit: 4, bytesInFixed: 0, bytesOutPerUnit: 4 }
const accept: BidAnswer = { accept: true, units: 10, unitsPerSecond: 100, startDelayMs: 0, slots: 1, reason: '' }
const task = { op: 'map', params: { ops: [{ op: 'mul', value: 2 }] }, inputs: { x: { dtype: 'float32' as const, shape: [3, 1], data: Float32Array.from([1, 2, 3]) } } }
const shard = { jobId: 'j', index: 0, attempt: 1, start: 0, end: 3, task }
const echo = async (): Promise<{ partial: { out: typeof task.inputs.x }, computeMs: number }> => ({ partial: { out: task.inputs.x }, computeMs: 0 })

describe('bid handler with peer limits', () => {
  it('declines past the rate limit without asking the bidder, and counts it', async () => {
    const limits = new PeerLimits({ rates: { bid: { burst: 1, perSecond: 0.001 } } })
    let asked = 0
    const bidder = (): BidAnswer => { asked++; return accept }
    const answers: BidAnswer[] = []
    for (let k = 0; k < 3; k++) {
      const [client, server] = await streamPair()
      void handleBidStream(server, peer, bidder, log, limits)
      answers.push(await bidOverStream(client, request))
    }
    expect(answers.map(a => a.accept)).toEqual([true, false, false])
    expect(answers[1]?.reason).toBe(RATE_LIMITED_REASON)
    expect(asked).toBe(1)
    expect(limits.info().rateLimited.bid).toBe(2)
  })

  it('strikes garbage requests and drops a banned peer\'s streams unread', async () => {
    const limits = new PeerLimits({ strikeThreshold: 2 })
    for (let k = 0; k < 2; k++) {
      const [client, server] = await streamPair()
      const handled = handleBidStream(server, peer, () => accept, log, limits)
      await lpStream(client).write(Uint8Array.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]))
      await handled
    }
    expect(limits.info().strikes.bid).toBe(2)
    expect(limits.isBanned(peer.toString())).toBe(true)
    const [client, server] = await streamPair()
    let asked = false
    void handleBidStream(server, peer, () => { asked = true; return accept }, log, limits)
    await expect(bidOverStream(client, request)).rejects.toThrow()
    expect(asked).toBe(false)
    expect(limits.info().refused).toBe(1)
    // A valid request with odd numbers is a strike too (a ProtocolError of validation).
    const [c2, s2] = await streamPair()
    const handled = handleBidStream(s2, other, () => accept, log, limits)
    await lpStream(c2).write(BidRequestCodec.encode({ ...request, units: 0 }))
    await handled
    expect(limits.info().strikes.bid).toBe(3)
  })
})

describe('shard handler with peer limits and admission', () => {
  it('refuses past the rate limit with ERR_RATE_LIMITED, before reading the shard', async () => {
    const limits = new PeerLimits({ rates: { shard: { burst: 1, perSecond: 0.001 } } })
    const codes: Array<string | undefined> = []
    for (let k = 0; k < 2; k++) {
      const [client, server] = await streamPair()
      void handleShardStream(server, peer, echo, log, { guard: limits })
      codes.push(await asyncCodeOf(shardOverStream(client, shard, AbortSignal.timeout(5000)).then(() => undefined, (err: { remoteCode?: string }) => { throw Object.assign(new Error('remote'), { code: err.remoteCode }) })))
    }
    expect(codes).toEqual([undefined, 'ERR_RATE_LIMITED'])
    expect(limits.info().rateLimited.shard).toBe(1)
  })

  it('answers a refused admission with its code, even while the coordinator still has megabytes to send, and releases admitted shards when they end', async () => {
    let held = 0
    let admitted = 0
    const admit = (): (() => void) => {
      if (held >= 1) throw new PeerOverLimitError('over')
      held++
      admitted++
      return () => { held-- }
    }
    // One admitted shard that waits until we let it go.
    let letGo: () => void = () => {}
    const gate = new Promise<void>(resolve => { letGo = resolve })
    const [c1, s1] = await streamPair()
    void handleShardStream(s1, peer, async () => { await gate; return await echo() }, log, { admit })
    const first = shardOverStream(c1, shard, AbortSignal.timeout(10_000))
    await expect.poll(() => held).toBe(1)
    // The second is refused at once; its 8 MiB of inputs are cut short, its code arrives.
    const n = 2 * 1024 * 1024
    const big = { ...shard, end: n, task: { ...task, inputs: { x: { dtype: 'float32' as const, shape: [n, 1], data: new Float32Array(n) } } } }
    const [c2, s2] = await streamPair()
    void handleShardStream(s2, peer, echo, log, { admit })
    await expect(shardOverStream(c2, big, AbortSignal.timeout(10_000))).rejects.toMatchObject({ code: 'ERR_SHARD_REMOTE', remoteCode: 'ERR_PEER_OVER_LIMIT' })
    letGo()
    await first
    await expect.poll(() => held).toBe(0)
    expect(admitted).toBe(1)
  })

  it('strikes malformed headers and chunks, not declared sizes over its own limits', async () => {
    const limits = new PeerLimits()
    const send = async (frames: Uint8Array[], transport = {}): Promise<string> => {
      const [client, server] = await streamPair()
      void handleShardStream(server, peer, echo, log, { guard: limits, ...transport })
      const lp = lpStream(client)
      for (const f of frames) await lp.write(f)
      return ResultHeaderCodec.decode((await lp.read()).subarray()).errorCode
    }
    const header = (tensors: Array<{ name: string, dtype: string, shape: number[] }>): Uint8Array =>
      ShardHeaderCodec.encode({ jobId: 'j', index: 0, attempt: 1, op: 'map', params: '{}', start: 0, end: 1, tensors, refs: [], blobs: [] })
    expect(await send([Uint8Array.from([0x0a, 0xff, 0xff, 0x7f])])).toBe('ERR_FIELD_TOO_LONG')
    expect(await send([header([{ name: 'x', dtype: 'float32', shape: [1] }]), new Uint8Array(8)])).toBe('ERR_BAD_CHUNK')
    expect(limits.info().strikes.shard).toBe(2)
    expect(await send([header([{ name: 'x', dtype: 'float32', shape: [1 << 20, 1 << 20] }])], { limits: { ...DEFAULT_WIRE_LIMITS, maxTensorBytes: 1024 } })).toBe('ERR_LIMIT_EXCEEDED')
    expect(limits.info().strikes.shard).toBe(2)
  })

  it('isMalformed: ProtocolErrors and oversize frames, not limits, bulk transfers or resets', () => {
    expect(isMalformed(new ProtocolError('x', 'ERR_DECODE'))).toBe(true)
    expect(isMalformed(Object.assign(new Error('x'), { name: 'InvalidDataLengthError' }))).toBe(true)
    expect(isMalformed(new ProtocolError('x', 'ERR_BULK'))).toBe(false)
    expect(isMalformed(new LimitExceededError('x'))).toBe(false)
    expect(isMalformed(Object.assign(new Error('x'), { name: 'StreamResetError' }))).toBe(false)
  })
})

describe('blob handler: grants', () => {
  let store: BlobStore
  beforeAll(async () => {
    store = new BlobStore(await mkdtemp(join(tmpdir(), 'tm-grant-')))
    await store.start()
  })

  /** The raw answer frame a peer gets for a CID. */
  async function rawAnswer (from: PeerId, cid: string, limits?: PeerLimits): Promise<Uint8Array> {
    const [client, server] = await streamPair()
    void handleBlobStream(server, from, store, log, undefined, limits)
    const lp = lpStream(client, { maxDataLength: CHUNK_BYTES })
    await lp.write(BlobRequestCodec.encode({ cid }))
    return (await lp.read()).subarray()
  }

  it('serves a CID only to the peer it was granted to; everyone else cannot tell it from an absent CID', async () => {
    const bytes = Uint8Array.from({ length: 5000 }, (_, i) => i % 251)
    const cid = await store.put(bytes)
    const absent = await cidOf(Uint8Array.from([1, 2, 3, 4]))
    const release = store.grant(peer.toString(), cid)
    // The grantee gets the bytes.
    const [client, server] = await streamPair()
    void handleBlobStream(server, peer, store, log)
    expect(await blobOverStream(client, cid)).toEqual(bytes)
    // Another peer: the same bytes on the wire as for a CID this node never had.
    const refused = await rawAnswer(other, cid)
    const missing = await rawAnswer(other, absent)
    expect(refused).toEqual(missing)
    expect(BlobAnswerCodec.decode(refused)).toEqual({ ok: false, size: 0, error: BLOB_NOT_HERE })
    // Released: the grantee is an outsider again.
    release()
    release()
    expect(await rawAnswer(peer, cid)).toEqual(missing)
    expect(store.servable(peer.toString(), cid)).toBe(false)
    // This node's own reads are not affected.
    expect(await store.get(cid)).toEqual(bytes)
  })

  it('counts grants per job: a CID stays served while any job that granted it lives', async () => {
    const cid = await store.put(Uint8Array.from([7, 7, 7]))
    const a = store.grant(peer.toString(), cid)
    const b = store.grant(peer.toString(), cid)
    a()
    expect(store.servable(peer.toString(), cid)).toBe(true)
    b()
    expect(store.servable(peer.toString(), cid)).toBe(false)
  })

  it('refuses past the rate limit with ERR_RATE_LIMITED, and strikes a request that is not a CID', async () => {
    const limits = new PeerLimits({ rates: { blob: { burst: 1, perSecond: 0.001 } } })
    const cid = await store.put(Uint8Array.from([5]))
    store.grant(peer.toString(), cid)
    const fetch = async (): Promise<string | undefined> => {
      const [client, server] = await streamPair()
      void handleBlobStream(server, peer, store, log, undefined, limits)
      return await asyncCodeOf(blobOverStream(client, cid))
    }
    expect(await fetch()).toBeUndefined()
    expect(await fetch()).toBe('ERR_RATE_LIMITED')
    const [client, server] = await streamPair()
    const handled = handleBlobStream(server, other, store, log, undefined, limits)
    await lpStream(client).write(BlobRequestCodec.encode({ cid: '../../etc/passwd' }))
    await handled
    expect(limits.info().strikes.blob).toBe(1)
  })

  it('JobShares grants what a shard names to the peer it goes to, until the job releases', async () => {
    const shares = new JobShares(store, new ContentIndex())
    const t = { dtype: 'float32' as const, shape: [2], data: Float32Array.from([1, 2]) }
    const cid = await shares.tensorRef(t)
    expect(store.servable(peer.toString(), cid)).toBe(false)
    shares.grant(peer.toString(), [cid])
    shares.grant(peer.toString(), [cid])
    expect(store.servable(peer.toString(), cid)).toBe(true)
    expect(store.servable(other.toString(), cid)).toBe(false)
    expect(await store.get(cid)).toBeDefined()
    shares.release()
    expect(store.servable(peer.toString(), cid)).toBe(false)
    // A grant after the job ended grants nothing.
    shares.grant(other.toString(), [cid])
    expect(store.servable(other.toString(), cid)).toBe(false)
  })
})

describe('capacity topic scoring', () => {
  it('whitelists loopback and the testnet subnets from IP colocation, nothing else', () => {
    const set = new SubnetSet(COLOCATION_WHITELIST)
    for (const ip of ['127.0.0.1', '127.255.1.2', '::1', '198.18.0.1', '198.19.255.254']) expect(set.has(ip)).toBe(true)
    for (const ip of ['128.0.0.1', '198.20.0.1', '198.17.255.255', '10.0.0.1', '::2', 'not-an-ip']) expect(set.has(ip)).toBe(false)
    expect(capacityScoreParams().IPColocationFactorWhitelist?.has('127.0.0.1')).toBe(true)
  })

  it('scores the capacity topic so that three rejected adverts graylist even a peer at the score cap', () => {
    const params = capacityScoreParams()
    const topic = params.topics?.[CAPACITY_TOPIC]
    if (topic === undefined) throw new Error('no capacity topic params')
    expect(topic.invalidMessageDeliveriesWeight).toBeLessThan(0)
    expect(topic.invalidMessageDeliveriesDecay).toBeGreaterThan(0)
    expect(topic.invalidMessageDeliveriesDecay).toBeLessThan(1)
    const cap = params.topicScoreCap ?? 0
    const score = (invalid: number): number => cap + invalid * invalid * topic.invalidMessageDeliveriesWeight * topic.topicWeight
    expect(score(3)).toBeLessThan(GRAYLIST_THRESHOLD)
    expect(score(0)).toBeGreaterThan(capacityScoreThresholds().gossipThreshold ?? 0)
  })
})
