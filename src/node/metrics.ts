import { TypedEventEmitter } from '@libp2p/interface'
import { prometheusMetrics } from '@libp2p/prometheus-metrics'
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import type { Job, ShardAttempt, ShardRecord } from './jobs/job.ts'
import type { JobObserver } from './jobs/job-manager.ts'
import type { PeerDirectory } from './peer-directory.ts'
import type { ExecutorPool } from '../compute/index.ts'
import type { AdvertCounters } from '../protocol/capacity/index.ts'
import type { MisbehaviourInfo } from './access/peer-limits.ts'
import type { Libp2p, Metrics } from '@libp2p/interface'
import type { PrometheusMetricsComponents } from '@libp2p/prometheus-metrics'

/**
 * Job durations in seconds: a small job on loopback takes tens of
 * milliseconds, a large one on a LAN minutes.
 */
export const JOB_DURATION_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800]

/** Failures that are not a peer's fault: a losing backup copy, a cancelled job. */
const NOT_FAILURES = new Set(['ERR_SUPERSEDED', 'ERR_CANCELLED'])

export interface NodeMetricsComponents {
  directory: PeerDirectory
  pool: ExecutorPool
  /** This node's libp2p host, once it exists. */
  libp2p: () => Libp2p | undefined
  /** The capacity service's advert counters, once it runs. */
  adverts: () => AdvertCounters | undefined
  /** The jobs this node coordinates. */
  jobs: () => Job[]
  /** Per-peer limits: strikes, bans, refusals (GET /v1/node `misbehaving`). */
  misbehaving?: () => MisbehaviourInfo | undefined
}

export interface NodeMetricsEvents {
  /** Something a dashboard shows changed: a job, a peer, a connection. */
  change: CustomEvent<'jobs' | 'peers' | 'connections'>
}

/**
 * One node's Prometheus metrics, in a registry of its own (several nodes
 * share a process in tests, so nothing goes to prom-client's global one).
 * It watches the jobs this node coordinates through their records rather
 * than through hooks in dispatch: every attempt is in `shards[].history`.
 */
/** How often a running job's shard attempts are counted into the metrics (its end counts them at once). */
const SCAN_INTERVAL_MS = 100

export class NodeMetrics extends TypedEventEmitter<NodeMetricsEvents> implements JobObserver {
  readonly registry = new Registry()
  private readonly c: NodeMetricsComponents
  private readonly seen = new WeakSet<ShardAttempt>()
  private readonly ended = new WeakSet<ShardAttempt>()
  private readonly counted = new WeakSet<ShardRecord>()
  private readonly shardsRun: Counter<'peer'>
  private readonly shardsFailed: Counter<'peer' | 'code'>
  private readonly shardsRetried: Counter<'peer'>
  private readonly shardCopies: Counter<'peer' | 'kind'>
  private readonly shardBytes: Counter<'peer' | 'direction'>
  private readonly shardsServed: Counter<'op' | 'outcome'>
  private readonly jobsFinished: Counter<'op' | 'state'>
  private readonly jobDuration: Histogram<'op' | 'state'>
  private readonly busySeconds: Counter
  private readonly peerJoins: Counter
  private readonly peerLeaves: Counter<'reason'>
  /** Busy workers since `busySince` (performance.now()), integrated into busySeconds. */
  private busy = 0
  private busySince = performance.now()
  private readonly onPoolChange = (): void => { this.integrateBusy() }
  private readonly onJoin = (): void => { this.peerJoins.inc(); this.changed('peers') }
  private readonly onUpdate = (): void => { this.changed('peers') }
  private readonly onLeave = (evt: CustomEvent<{ peerId: string, reason: string }>): void => {
    this.peerLeaves.inc({ reason: evt.detail.reason })
    this.changed('peers')
  }

  private readonly onConnection = (): void => { this.changed('connections') }

  constructor (components: NodeMetricsComponents) {
    super()
    this.c = components
    const registers = [this.registry]
    // Event-loop lag (nodejs_eventloop_lag_*), GC, memory, CPU, handles.
    collectDefaultMetrics({ register: this.registry })

    new Gauge({ name: 'tensormesh_peers', help: 'Peers in this node\'s directory (fresh adverts)', registers, collect () { this.set(components.directory.size) } }) // eslint-disable-line no-new
    new Gauge({ name: 'tensormesh_connections', help: 'Open libp2p connections of this node', registers, collect () { this.set(components.libp2p()?.getConnections().length ?? 0) } }) // eslint-disable-line no-new
    this.peerJoins = new Counter({ name: 'tensormesh_peer_joins_total', help: 'Peers that entered the directory', registers })
    this.peerLeaves = new Counter({ name: 'tensormesh_peer_leaves_total', help: 'Peers that left the directory, by reason', labelNames: ['reason'], registers })

    mirrorCounter(this.registry, 'tensormesh_adverts_published_total', 'Capacity adverts this node published', () => ({ '': components.adverts()?.published ?? 0 }))
    mirrorCounter(this.registry, 'tensormesh_adverts_accepted_total', 'Capacity adverts from peers that passed validation', () => ({ '': components.adverts()?.accepted ?? 0 }))
    mirrorCounter(this.registry, 'tensormesh_adverts_rejected_total', 'Capacity adverts from peers that failed validation, by reason', () => {
      const rejected = components.adverts()?.rejected
      return rejected === undefined ? {} : { ...rejected }
    }, 'reason')

    const misbehaving = components.misbehaving ?? (() => undefined)
    mirrorCounter(this.registry, 'tensormesh_peer_strikes_total', 'Malformed frames and adverts counted against peers, by where they arrived (bid, shard, blob, advert)', () => ({ ...misbehaving()?.strikes }), 'source')
    mirrorCounter(this.registry, 'tensormesh_peer_bans_total', 'Peers banned for a cool-down after too many strikes', () => ({ '': misbehaving()?.bans ?? 0 }))
    mirrorCounter(this.registry, 'tensormesh_banned_refused_total', 'Streams, connections and adverts of banned peers that were dropped', () => ({ '': misbehaving()?.refused ?? 0 }))
    mirrorCounter(this.registry, 'tensormesh_rate_limited_total', 'Requests from peers refused by the per-peer rate limits, by protocol', () => ({ ...misbehaving()?.rateLimited }), 'protocol')
    mirrorCounter(this.registry, 'tensormesh_shards_over_limit_total', 'Shards refused because their coordinator already held its share of this node', () => ({ '': misbehaving()?.overLimit ?? 0 }))
    new Gauge({ name: 'tensormesh_peers_banned', help: 'Peers in their ban cool-down now', registers, collect () { this.set(misbehaving()?.banned.length ?? 0) } }) // eslint-disable-line no-new

    this.shardCopies = new Counter({ name: 'tensormesh_shard_copies_total', help: 'Shard copies this node sent out as coordinator, by peer and kind (first, retry, backup, replica, check)', labelNames: ['peer', 'kind'], registers })
    this.shardsRun = new Counter({ name: 'tensormesh_shards_run_total', help: 'Shard copies that returned a partial, by the peer that ran them (this node\'s jobs)', labelNames: ['peer'], registers })
    this.shardsFailed = new Counter({ name: 'tensormesh_shards_failed_total', help: 'Shard copies that failed, by peer and error code (this node\'s jobs)', labelNames: ['peer', 'code'], registers })
    this.shardsRetried = new Counter({ name: 'tensormesh_shards_retried_total', help: 'Retries of failed shards, by the peer that took the retry (this node\'s jobs)', labelNames: ['peer'], registers })
    this.shardBytes = new Counter({ name: 'tensormesh_shard_bytes_total', help: 'Tensor bytes of accepted shards: out = inputs sent to the peer, in = partial received', labelNames: ['peer', 'direction'], registers })
    this.shardsServed = new Counter({ name: 'tensormesh_shards_served_total', help: 'Shards this node ran for coordinators (its own jobs excluded), by outcome', labelNames: ['op', 'outcome'], registers })

    this.jobsFinished = new Counter({ name: 'tensormesh_jobs_finished_total', help: 'Jobs this node coordinated that finished, by operator and state', labelNames: ['op', 'state'], registers })
    this.jobDuration = new Histogram({ name: 'tensormesh_job_duration_seconds', help: 'Time from submission to the end of a job this node coordinated', labelNames: ['op', 'state'], buckets: JOB_DURATION_BUCKETS, registers })
    new Gauge({ // eslint-disable-line no-new
      name: 'tensormesh_jobs',
      help: 'Jobs this node holds, by state',
      labelNames: ['state'],
      registers,
      collect () {
        const by: Record<string, number> = { queued: 0, running: 0, succeeded: 0, failed: 0, cancelled: 0 }
        for (const job of components.jobs()) by[job.state] = (by[job.state] ?? 0) + 1
        for (const [state, n] of Object.entries(by)) this.set({ state }, n)
      }
    })

    const pool = components.pool
    new Gauge({ name: 'tensormesh_executor_workers', help: 'Executor worker threads', registers, collect () { this.set(pool.slots) } }) // eslint-disable-line no-new
    new Gauge({ name: 'tensormesh_executor_busy_workers', help: 'Executor workers running a task now', registers, collect () { this.set(pool.busy) } }) // eslint-disable-line no-new
    new Gauge({ name: 'tensormesh_executor_queued_tasks', help: 'Tasks waiting for a worker', registers, collect () { this.set(pool.queued) } }) // eslint-disable-line no-new
    new Gauge({ name: 'tensormesh_executor_utilisation_ratio', help: 'Busy workers / workers, now', registers, collect () { this.set(pool.slots === 0 ? 0 : pool.busy / pool.slots) } }) // eslint-disable-line no-new
    const self = this
    this.busySeconds = new Counter({
      name: 'tensormesh_executor_busy_seconds_total',
      help: 'Worker-seconds spent running tasks; rate() / workers is the utilisation over a window',
      registers,
      collect () { self.integrateBusy() }
    })
  }

  /** The libp2p metrics service, reporting libp2p's own counters into this registry. */
  libp2pMetrics (): (components: PrometheusMetricsComponents) => Metrics {
    // Default metrics are collected above; libp2p's module-level metric cache is
    // cleared per node, so each node's libp2p registers into its own registry.
    return prometheusMetrics({ registry: this.registry, collectDefaultMetrics: false })
  }

  /** Starts watching the pool, the directory and (once it exists) libp2p's connections. */
  start (): void {
    this.busy = this.c.pool.busy
    this.busySince = performance.now()
    this.c.pool.addEventListener('change', this.onPoolChange)
    this.c.directory.addEventListener('peer:join', this.onJoin)
    this.c.directory.addEventListener('peer:update', this.onUpdate)
    this.c.directory.addEventListener('peer:leave', this.onLeave)
    const libp2p = this.c.libp2p()
    libp2p?.addEventListener('connection:open', this.onConnection)
    libp2p?.addEventListener('connection:close', this.onConnection)
  }

  stop (): void {
    this.integrateBusy()
    this.c.pool.removeEventListener('change', this.onPoolChange)
    this.c.directory.removeEventListener('peer:join', this.onJoin)
    this.c.directory.removeEventListener('peer:update', this.onUpdate)
    this.c.directory.removeEventListener('peer:leave', this.onLeave)
    const libp2p = this.c.libp2p()
    libp2p?.removeEventListener('connection:open', this.onConnection)
    libp2p?.removeEventListener('connection:close', this.onConnection)
  }

  /** Prometheus text exposition of everything in the registry. */
  async text (): Promise<{ contentType: string, body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() }
  }

  /** JobObserver: a job this node coordinates (new, or restored from the journal). */
  jobTracked (job: Job): void {
    // A restored job's earlier attempts were counted by the process that ran them.
    for (const rec of job.shards) {
      for (const a of rec.history) { this.seen.add(a); if (a.ms !== undefined) this.ended.add(a) }
      if (rec.state === 'done') this.counted.add(rec)
    }
    // A scan walks every shard's history: once per progress event that is
    // quadratic in a job's shards (512 tiny shards: 3% of a coordinator's
    // CPU). Progress scans at most every SCAN_INTERVAL_MS; a state change at once.
    let pending: NodeJS.Timeout | undefined
    const onProgress = (): void => {
      if (pending !== undefined) return
      pending = setTimeout(() => {
        pending = undefined
        this.scan(job)
      }, SCAN_INTERVAL_MS)
      pending.unref()
      this.changed('jobs')
    }
    const onState = (): void => {
      clearTimeout(pending)
      pending = undefined
      this.scan(job)
      if (job.finished) {
        job.removeEventListener('progress', onProgress)
        job.removeEventListener('state', onState)
        this.jobsFinished.inc({ op: job.op, state: job.state })
        this.jobDuration.observe({ op: job.op, state: job.state }, ((job.finishedAt ?? Date.now()) - job.createdAt) / 1000)
      }
      this.changed('jobs')
    }
    if (!job.finished) {
      job.addEventListener('progress', onProgress)
      job.addEventListener('state', onState)
    }
    this.changed('jobs')
  }

  /** JobObserver: a shard this node ran for another coordinator. */
  shardServed (op: string, outcome: 'ok' | 'error'): void {
    this.shardsServed.inc({ op, outcome })
  }

  /** Counts the attempts in a job's record that were not counted yet. */
  private scan (job: Job): void {
    for (const rec of job.shards) {
      for (const a of rec.history) {
        if (!this.seen.has(a)) {
          this.seen.add(a)
          this.shardCopies.inc({ peer: a.peer, kind: a.kind })
          if (a.kind === 'retry') this.shardsRetried.inc({ peer: a.peer })
        }
        if (a.ms !== undefined && !this.ended.has(a)) {
          this.ended.add(a)
          if (a.error === undefined) this.shardsRun.inc({ peer: a.peer })
          else if (!NOT_FAILURES.has(a.error.code)) this.shardsFailed.inc({ peer: a.peer, code: a.error.code })
        }
      }
      if (rec.state === 'done' && rec.peer !== undefined && !this.counted.has(rec)) {
        this.counted.add(rec)
        this.shardBytes.inc({ peer: rec.peer, direction: 'out' }, rec.bytesOut)
        this.shardBytes.inc({ peer: rec.peer, direction: 'in' }, rec.bytesIn)
      }
    }
  }

  private integrateBusy (): void {
    const now = performance.now()
    if (this.busy > 0) this.busySeconds.inc(this.busy * (now - this.busySince) / 1000)
    this.busySince = now
    this.busy = this.c.pool.busy
  }

  private changed (what: 'jobs' | 'peers' | 'connections'): void {
    this.safeDispatchEvent('change', { detail: what })
  }
}

/**
 * A Prometheus counter that follows a counter kept elsewhere (the capacity
 * service's plain numbers): each scrape adds what grew since the last one.
 * With `label`, the source is one number per label value; without, key ''.
 */
function mirrorCounter (registry: Registry, name: string, help: string, read: () => Record<string, number>, label?: string): void {
  const last = new Map<string, number>()
  new Counter({ // eslint-disable-line no-new
    name,
    help,
    labelNames: label === undefined ? [] : [label],
    registers: [registry],
    collect () {
      for (const [key, value] of Object.entries(read())) {
        const before = last.get(key) ?? 0
        // A restarted source starts again from zero: count what it has now.
        const delta = value >= before ? value - before : value
        last.set(key, value)
        if (label === undefined) this.inc(delta)
        else this.inc({ [label]: key }, delta)
      }
    }
  })
}
