import { peerIdFromString } from '@libp2p/peer-id'
import { TensormeshError, errorCode, errorMessage } from '../../errors.ts'
import { getOperator } from '../../compute/operators/index.ts'
import { requestBid } from '../../protocol/bid/index.ts'
import { planShards, DEFAULT_SHARDS_PER_PEER } from './split.ts'
import { linkAdjustedRate } from './links.ts'
import { BID_STRAGGLER_MS, bidOrder, gatherBids, wantedPeers } from './bid-sample.ts'
import { SESSION_MAX_PAYLOAD } from '../../protocol/shard/session.ts'
import type { ShardSessions } from '../../protocol/shard/session.ts'
import type { LinkMeter } from './links.ts'
import { JobRun, MAX_INFLIGHT_PER_PEER, short } from './job-run.ts'
import { ContentIndex, JobShares } from '../shared-content.ts'
import type { Job } from './job.ts'
import type { Participant } from './job-run.ts'
import type { SplitBid } from './split.ts'
import type { ExecutorPool } from '../../compute/index.ts'
import type { CostModel, Tensors } from '../../compute/operators/types.ts'
import type { BidAnswer, BidRequest } from '../../protocol/bid/index.ts'
import type { WireLimits } from '../../protocol/limits.ts'
import type { Logger } from '../log.ts'
import type { PeerDirectory } from '../peer-directory.ts'
import type { Libp2p } from '@libp2p/interface'
import type { BlobStore } from '../blob-store.ts'
import type { BulkServer } from '../../protocol/bulk/index.ts'


/**
 * Extra shards in flight per peer when every shard is small: a tiny shard's
 * round trip (~2 ms to another process here) is many times its compute
 * (~0.2 ms), so one queued shard leaves the peer idle most of the time.
 * slots + 3, with RETRY_OVERCOMMIT's one more, is a peer's share per
 * coordinator (slots + PEER_QUEUE_ALLOWANCE).
 */
export const SMALL_SHARD_EXTRA_INFLIGHT = 3

/** Every shard's inputs and result fit a session frame: memory is no reason to hold back. */
export function isSmallJob (cost: CostModel, shards: Array<{ start: number, end: number }>, fixedBytes = 0): boolean {
  let units = 0
  for (const s of shards) units = Math.max(units, s.end - s.start)
  return units * (cost.bytesInPerUnit + cost.bytesOutPerUnit) + (cost.bytesOutFixed ?? 0) + fixedBytes <= SESSION_MAX_PAYLOAD
}

/** A job's bid sample draws from a seed of its id: the same job asks the same peers first. */
export function seedOf (id: string): number {
  let h = 2166136261
  for (let i = 0; i < id.length; i++) h = Math.imul(h ^ id.charCodeAt(i), 16777619)
  return h >>> 0
}

/** How long a peer's acceptance stands in for a new bid round of a small job. */
export const BID_CACHE_MS = 5_000

/**
 * Peers' last answers to calls for bids, for small jobs. An acceptance is
 * reused for a job of the same operator whose smallest shard needs no more
 * bytes than the accepted one did and whose work per unit is known to the
 * accepted rate (scaled by flops per unit), within BID_CACHE_MS. A decline,
 * an error or anything else means a real call for bids: the peer's own word
 * decides, as it would without the cache. A wrong guess costs little: a
 * peer that turned busy refuses the shard (fewer are sent to it), and a peer
 * that went away fails it like any other (it runs elsewhere).
 */
export class BidCache {
  private readonly answers = new Map<string, { op: string, smallest: number, flopsPerUnit: number, answer: BidAnswer, at: number }>()

  record (peer: string, req: BidRequest, answer: BidAnswer, now: number): void {
    if (!answer.accept) { this.answers.delete(peer); return }
    this.answers.set(peer, { op: req.op, smallest: req.bytesInFixed + req.bytesInPerUnit, flopsPerUnit: Math.max(req.flopsPerUnit, 1e3), answer, at: now })
  }

  reuse (peer: string, req: BidRequest, now: number): BidAnswer | undefined {
    const e = this.answers.get(peer)
    if (e === undefined || e.op !== req.op || now - e.at > BID_CACHE_MS || req.bytesInFixed + req.bytesInPerUnit > e.smallest) return undefined
    // The peer's rate in flops, as it bid it, applied to this job's units.
    const unitsPerSecond = e.answer.unitsPerSecond * e.flopsPerUnit / Math.max(req.flopsPerUnit, 1e3)
    return { ...e.answer, units: req.units, unitsPerSecond }
  }

  forget (peer: string): void {
    this.answers.delete(peer)
  }
}

/** Shards a job keeps in flight on one peer: its slots, one more on the wire, more for small shards. */
export function inflightLimit (slots: number, local: boolean, small: boolean): number {
  if (small) return Math.min(slots + SMALL_SHARD_EXTRA_INFLIGHT, MAX_INFLIGHT_PER_PEER)
  return Math.min(local ? slots : slots + 1, MAX_INFLIGHT_PER_PEER)
}

export interface CoordinatorComponents {
  libp2p: Libp2p
  directory: PeerDirectory
  pool: ExecutorPool
  log: Logger
  /** This node's own answer to a call for bids (the same as its peers get). */
  bid: (req: BidRequest) => BidAnswer
  /** Peers this node no longer asks for bids (outvoted too often). */
  distrusted: (peer: string) => boolean
  onOutvoted: (peer: string, job: Job, shard: number) => void
  /** Where this node serves a job's shared content from. */
  blobs: BlobStore
  /** Link rates measured to each peer across jobs: the split and deadlines read them. */
  links?: LinkMeter
  /** The bulk channel for large shard inputs, when enabled. */
  bulk?: BulkServer
  /** A peer's bulk port from its advert: where to push to a peer we dialed. */
  bulkPortOf?: (peer: string) => number | undefined
  /** One session stream per peer for small shards. */
  sessions?: ShardSessions
}

/**
 * Seams for tests and fault injection: called at fixed points of a job's
 * life and awaited, so a test can stop a peer between bid and shard.
 */
export interface JobHooks {
  afterBids?: (job: Job) => Promise<void> | void
}

export interface CoordinatorInit {
  shardsPerPeer?: number
  limits: WireLimits
  hooks?: JobHooks
}

export interface RunOptions {
  /** Partials already accepted (a job resumed from the journal). */
  completed?: Map<number, Tensors>
  onShardDone?: (index: number, partial: Tensors) => void
  /** Called once the shards are cut, before any is sent (the journal keeps the split). */
  onPlanned?: (job: Job) => void
}

/**
 * Runs one job as its coordinator: calls for bids, splits by the bids (or
 * keeps the split of a resumed job), then hands dispatch to a JobRun.
 */
export class Coordinator {
  private readonly c: CoordinatorComponents
  private readonly init: CoordinatorInit
  /** Shared inputs' bytes and CIDs, across this node's jobs (training rounds reuse their data). */
  private readonly content = new ContentIndex()
  private readonly bidCache = new BidCache()

  constructor (components: CoordinatorComponents, init: CoordinatorInit) {
    this.c = components
    this.init = init
  }

  get selfId (): string {
    return this.c.libp2p.peerId.toString()
  }

  /**
   * The peers that accept a job's call for bids (this node first, if it
   * accepts; then the fastest), at most `max`: a collective round's group.
   * The job's bid records are set as for any job.
   */
  async acceptingPeers (job: Job, max: number): Promise<string[]> {
    const bids = await this.collectBids(job)
    const self = bids.filter(b => b.peer === this.selfId && b.answer?.accept === true).map(b => b.peer)
    const others = bids.filter(b => b.peer !== this.selfId && b.answer?.accept === true && !this.c.distrusted(b.peer))
      .sort((a, b) => (b.answer?.unitsPerSecond ?? 0) - (a.answer?.unitsPerSecond ?? 0)).map(b => b.peer)
    return [...self, ...others].slice(0, Math.max(1, max))
  }

  /** A job's content-addressed inputs, served to the peers granted them, for work outside `run` (a collective round); release() when done. */
  shares (): JobShares {
    return new JobShares(this.c.blobs, this.content)
  }

  async run (job: Job, options: RunOptions = {}): Promise<void> {
    // Cancelled while it waited for the journal: nothing to run.
    if (job.finished) return
    const plan = job.plan
    const inputs = job.inputs
    if (plan === undefined || inputs === undefined) throw new Error('job has no plan')
    const op = getOperator(job.op)
    job.setState('running')
    try {
      const bids = await this.collectBids(job)
      await this.init.hooks?.afterBids?.(job)
      if (job.finished) return
      const accepted = bids.filter(b => b.answer?.accept === true)
      if (accepted.length === 0) {
        throw new TensormeshError('ERR_NO_CAPACITY', `no peer accepted job ${job.id}: ${bids.map(b => `${short(b.peer)}: ${b.answer?.reason ?? 'no answer'}`).join('; ') || 'no candidates'}`)
      }
      if (accepted.length < job.verify.replicas) {
        throw new TensormeshError('ERR_NO_CAPACITY', `verify.replicas is ${job.verify.replicas} but only ${accepted.length} peer(s) accepted job ${job.id}`)
      }
      let preferred: string[]
      if (job.shards.length === 0) {
        // A remote peer's rate counts its link: each unit's bytes cross it (measured in earlier jobs; the coordinator moves none).
        const bytesPerUnit = plan.cost.bytesInPerUnit + plan.cost.bytesOutPerUnit
        const split: SplitBid[] = accepted.map(b => ({
          peer: b.peer,
          unitsPerSecond: b.peer === this.selfId ? b.answer?.unitsPerSecond ?? 0 : linkAdjustedRate(b.answer?.unitsPerSecond ?? 0, bytesPerUnit, this.c.links?.estimate(b.peer)),
          maxUnits: b.answer?.units ?? 0
        }))
        const planned = planShards(plan.units, split, job.schedule.shardsPerPeer ?? this.init.shardsPerPeer ?? DEFAULT_SHARDS_PER_PEER)
        job.shards = planned.map(s => ({ index: s.index, start: s.start, end: s.end, state: 'pending', attempts: 0, bytesIn: 0, bytesOut: 0, history: [] }))
        preferred = planned.map(s => s.preferred)
        for (const b of job.bids) if (b.accept) b.planned = preferred.filter(p => p === b.peer).length
      } else {
        // A resumed job keeps its shards; whoever is free takes them.
        preferred = job.shards.map(() => '')
      }
      const small = isSmallJob(plan.cost, job.shards)
      const participants: Participant[] = accepted.map(b => {
        const local = b.peer === this.selfId
        const slots = b.answer?.slots ?? 1
        return { peer: b.peer, local, rate: b.answer?.unitsPerSecond ?? 1, slots, limit: inflightLimit(slots, local, small), inflight: 0, excluded: false }
      })
      options.onPlanned?.(job)
      job.progressed()
      const shares = new JobShares(this.c.blobs, this.content)
      const run = new JobRun({ ...this.c, shares }, {
        job, op, inputs, participants, preferred, verify: job.verify, backups: job.schedule.backups !== false, limits: this.init.limits,
        completed: options.completed,
        onShardDone: options.onShardDone,
        onOutvoted: (peer, shard) => { this.c.onOutvoted(peer, job, shard) }
      })
      try {
        job.finish('succeeded', await run.run())
      } finally {
        shares.release()
        explainUnused(job, participants)
      }
    } catch (err) {
      if (job.finished) return // cancelled meanwhile
      job.finish('failed', undefined, { code: errorCode(err), message: errorMessage(err) })
    }
  }

  private async collectBids (job: Job): Promise<Array<{ peer: string, answer?: BidAnswer }>> {
    const plan = job.plan
    if (plan === undefined) return []
    const req: BidRequest = { jobId: job.id, op: job.op, units: plan.units, ...plan.cost }
    const candidates = this.c.directory.list()
      .map(e => e.capacity)
      .filter(c => c.operators.includes(job.op) && c.slots > 0 && !this.c.distrusted(c.peerId))
    // A small job reuses a peer's fresh acceptance of the same kind of job: its bid
    // round would cost more than the job. Declines and unknown peers are asked again.
    const small = isSmallJob(plan.cost, [{ start: 0, end: plan.units }], plan.cost.bytesInFixed)
    const now = Date.now()
    const ask = async (c: typeof candidates[number]): Promise<{ peer: string, answer?: BidAnswer, error?: string, cached?: boolean }> => {
      const cached = small ? this.bidCache.reuse(c.peerId, req, now) : undefined
      if (cached !== undefined) return { peer: c.peerId, answer: { ...cached, startDelayMs: c.slots > 0 ? (c.queued / c.slots) * 1000 : 0 }, cached: true }
      try {
        const answer = await requestBid(this.c.libp2p, peerIdFromString(c.peerId), req, job.controller.signal)
        this.bidCache.record(c.peerId, req, answer, Date.now())
        return { peer: c.peerId, answer }
      } catch (err) {
        this.bidCache.forget(c.peerId)
        return { peer: c.peerId, error: errorMessage(err) }
      }
    }
    // A sample sized by the job, widened while too few accept (bid-sample.ts).
    const remote = await gatherBids(bidOrder(candidates, seedOf(job.id)), wantedPeers(plan.units), ask,
      (c) => ({ peer: c.peerId, error: `no answer within ${BID_STRAGGLER_MS} ms of enough acceptances` }))
    const self = { peer: this.selfId, answer: this.c.bid(req) }
    const all = [self, ...remote]
    job.bids = all.map(b => ({
      peer: b.peer,
      accept: b.answer?.accept === true,
      ...('cached' in b && b.cached === true ? { cached: true } : {}),
      ...(b.answer?.accept === true ? { unitsPerSecond: b.answer.unitsPerSecond } : { reason: b.answer?.reason ?? `no answer: ${'error' in b ? String(b.error) : ''}` })
    }))
    return all
  }
}

/**
 * Completes the job's bid records: how many shards each accepting peer ran
 * and, for one that ran none, why (a user reading the record should never
 * have to guess why an idle, healthy peer sat a job out).
 */
export function explainUnused (job: Job, participants: Participant[]): void {
  for (const b of job.bids) {
    if (!b.accept) continue
    b.ran = job.shards.filter(s => s.peer === b.peer).length
    if (b.ran > 0) { delete b.unused; continue }
    const p = participants.find(q => q.peer === b.peer)
    const failed = job.shards.flatMap(s => s.history).find(h => h.peer === b.peer && h.error !== undefined && h.error.code !== 'ERR_SUPERSEDED')
    if (p?.excluded === true) b.unused = `excluded from the job after a failed copy${failed?.error !== undefined ? ` (${failed.error.code})` : ''}`
    else if (b.planned === 0) b.unused = `its share of the job's ${job.plan?.units ?? 0} units rounded to zero shards`
    else if (job.state !== 'succeeded') b.unused = 'the job stopped before it supplied a partial'
    else b.unused = `other peers finished its ${b.planned ?? 0} shard(s) first (stolen while it was busy, or a backup copy won)`
  }
}
