import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { random, startMesh, stopAll } from '../helpers/mesh.ts'
import { Scrape, parsePrometheusText, scrape } from '../helpers/prometheus.ts'
import { JOB_DURATION_BUCKETS } from '../../src/node/metrics.ts'
import type { Job } from '../../src/node/jobs/job.ts'
import type { MeshNode } from '../../src/node/mesh-node.ts'


/** Attempts in a job's record, by peer, that returned a partial / failed (a losing copy stopped on purpose is neither). */
function tally (job: Job): { ok: Map<string, number>, failed: Map<string, number>, retries: number } {
  const ok = new Map<string, number>()
  const failed = new Map<string, number>()
  let retries = 0
  for (const s of job.shards) {
    for (const a of s.history) {
      if (a.kind === 'retry') retries++
      if (a.ms === undefined) continue
      if (a.error === undefined) ok.set(a.peer, (ok.get(a.peer) ?? 0) + 1)
      else if (a.error.code !== 'ERR_SUPERSEDED') failed.set(a.peer, (failed.get(a.peer) ?? 0) + 1)
    }
  }
  return { ok, failed, retries }
}

describe('GET /metrics on a three-node mesh', () => {
  let nodes: MeshNode[] = []
  let stopOnBids: MeshNode | undefined

  beforeAll(async () => {
    nodes = await startMesh(3, (i) => (i === 0 ? { hooks: { afterBids: async () => { await stopOnBids?.stop() } } } : {}))
  })

  afterAll(async () => {
    await stopAll(nodes)
  })

  const api = (i: number): string => nodes[i]?.apiUrl ?? ''

  it('is Prometheus text with the mesh, advert, executor and event-loop families', async () => {
    // Hello fills the directories before any gossiped advert: wait for node 0's first tick to go out and one to come in.
    const counters = (): { published: number, accepted: number } => nodes[0]?.info().adverts ?? { published: 0, accepted: 0 }
    while (counters().published === 0 || counters().accepted === 0) await new Promise(resolve => setTimeout(resolve, 50))
    const { scrape: m, contentType } = await scrape(api(0))
    expect(contentType).toMatch(/^text\/plain; version=0\.0\.4/)
    expect(m.family('tensormesh_peers').type).toBe('gauge')
    expect(m.value('tensormesh_peers')).toBe(2)
    expect(m.value('tensormesh_connections')).toBeGreaterThanOrEqual(2)
    expect(m.family('tensormesh_adverts_published_total').type).toBe('counter')
    expect(m.value('tensormesh_adverts_published_total')).toBeGreaterThan(0)
    expect(m.value('tensormesh_adverts_accepted_total')).toBeGreaterThan(0)
    expect(m.samples('tensormesh_adverts_rejected_total').map(s => s.labels.reason).sort()).toEqual(['clock', 'garbage', 'invalid', 'oversized', 'replayed', 'spoofed', 'version'])
    expect(m.value('tensormesh_executor_workers')).toBe(1)
    expect(m.family('tensormesh_job_duration_seconds').type).toBe('histogram')
    expect(m.family('nodejs_eventloop_lag_seconds').type).toBe('gauge')
    expect(m.samples('nodejs_eventloop_lag_seconds')).toHaveLength(1)
    // libp2p's own counters, from @libp2p/prometheus-metrics, in the same registry.
    expect(m.value('libp2p_data_transfer_bytes_total', { protocol: 'global sent' })).toBeGreaterThan(0)
  })

  it('counts a job\'s shards per peer, bytes, duration and executor time as it runs', async () => {
    const before = await Promise.all([0, 1, 2].map(async i => (await scrape(api(i))).scrape))
    const coord = nodes[0] as MeshNode
    const job = coord.submit({ op: 'matmul', inputs: { a: random([300, 200], 1), b: random([200, 100], 2) } })
    await job.result()
    // The job ended before the scrape: its 'state' event has been handled.
    const after = await Promise.all([0, 1, 2].map(async i => (await scrape(api(i))).scrape))
    const [b0, a0] = [before[0], after[0]]
    if (b0 === undefined || a0 === undefined) throw new Error('no scrape')

    const { ok } = tally(job)
    const ids = nodes.map(n => n.peerId.toString())
    expect(new Set(ok.keys())).toEqual(new Set(ids))
    for (const id of ids) {
      expect(a0.value('tensormesh_shards_run_total', { peer: id }) - b0.value('tensormesh_shards_run_total', { peer: id })).toBe(ok.get(id))
    }
    expect(a0.value('tensormesh_shard_copies_total', { kind: 'first' }) - b0.value('tensormesh_shard_copies_total', { kind: 'first' })).toBe(job.shards.length)
    expect(a0.value('tensormesh_shards_failed_total') - b0.value('tensormesh_shards_failed_total')).toBe(0)
    const sent = job.shards.reduce((t, s) => t + s.bytesOut, 0)
    const received = job.shards.reduce((t, s) => t + s.bytesIn, 0)
    expect(sent).toBeGreaterThan(0)
    expect(a0.value('tensormesh_shard_bytes_total', { direction: 'out' }) - b0.value('tensormesh_shard_bytes_total', { direction: 'out' })).toBe(sent)
    expect(a0.value('tensormesh_shard_bytes_total', { direction: 'in' }) - b0.value('tensormesh_shard_bytes_total', { direction: 'in' })).toBe(received)
    // Remote shards' tensors crossed libp2p: its transport counter moved by at least their bytes.
    expect(a0.value('libp2p_data_transfer_bytes_total', { protocol: 'global sent' }) - b0.value('libp2p_data_transfer_bytes_total', { protocol: 'global sent' })).toBeGreaterThanOrEqual(sent)

    const h = a0.histogram('tensormesh_job_duration_seconds', { op: 'matmul', state: 'succeeded' })
    expect(h.count).toBe(1)
    expect(h.sum).toBeCloseTo(((job.finishedAt ?? 0) - job.createdAt) / 1000, 3)
    expect(h.buckets.get('+Inf')).toBe(1)
    expect(h.buckets.size).toBe(JOB_DURATION_BUCKETS.length + 1)
    expect(a0.value('tensormesh_jobs_finished_total', { op: 'matmul', state: 'succeeded' })).toBe(1)
    expect(a0.value('tensormesh_jobs', { state: 'succeeded' })).toBe(1)

    // Each peer counted, in its own registry, the shards it ran for node 0.
    for (const i of [1, 2]) {
      const served = (after[i]?.value('tensormesh_shards_served_total', { op: 'matmul', outcome: 'ok' }) ?? 0) - (before[i]?.value('tensormesh_shards_served_total', { op: 'matmul', outcome: 'ok' }) ?? 0)
      expect(served).toBeGreaterThanOrEqual(ok.get(ids[i] ?? '') ?? 0)
      // They coordinated nothing: no copies of their own in their registries.
      expect(after[i]?.samples('tensormesh_shard_copies_total')).toEqual([])
    }
    // Every shard ran in some node's workers.
    const busy = (ss: typeof after): number => ss.reduce((t, s) => t + (s?.value('tensormesh_executor_busy_seconds_total') ?? 0), 0)
    expect(busy(after)).toBeGreaterThan(busy(before))
  })

  it('counts failed and retried copies when a peer goes between bid and shard', async () => {
    const coord = nodes[0] as MeshNode
    const vanishing = nodes[2] as MeshNode
    const gone = vanishing.peerId.toString()
    const b0 = (await scrape(api(0))).scrape
    const job = coord.submit({ op: 'matmul', inputs: { a: random([300, 200], 3), b: random([200, 100], 4) } })
    stopOnBids = vanishing
    await job.result()
    const a0 = (await scrape(api(0))).scrape
    const { failed, retries } = tally(job)
    expect(failed.get(gone)).toBeGreaterThan(0)
    expect(a0.value('tensormesh_shards_failed_total', { peer: gone }) - b0.value('tensormesh_shards_failed_total', { peer: gone })).toBe(failed.get(gone))
    expect(retries).toBeGreaterThan(0)
    expect(a0.value('tensormesh_shards_retried_total') - b0.value('tensormesh_shards_retried_total')).toBe(retries)
    expect(a0.value('tensormesh_shard_copies_total', { kind: 'retry' }) - b0.value('tensormesh_shard_copies_total', { kind: 'retry' })).toBe(retries)
    const h = a0.histogram('tensormesh_job_duration_seconds', { op: 'matmul', state: 'succeeded' })
    expect(h.count).toBe(2)
  })
})

describe('the strict Prometheus text parser the tests use', () => {
  const ok = '# HELP a_total A.\n# TYPE a_total counter\na_total{x="1",y="q\\"uote"} 3\n# TYPE h histogram\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 2\nh_sum 1.5e0\nh_count 2\n# TYPE g gauge\ng Nan\n'

  it('reads families, labels with escapes, and histograms', () => {
    const m = new Scrape(ok)
    expect(m.value('a_total', { x: '1' })).toBe(3)
    expect(m.samples('a_total')[0]?.labels.y).toBe('q"uote')
    expect(m.histogram('h', {})).toEqual({ count: 2, sum: 1.5, buckets: new Map([['1', 1], ['+Inf', 2]]) })
    expect(m.value('g')).toBeNaN()
  })

  it.each([
    ['a sample of an undeclared family', 'b 1\n'],
    ['a value that is not a number', '# TYPE a gauge\na one\n'],
    ['an unterminated label', '# TYPE a gauge\na{x="1} 1\n'],
    ['a duplicate series', '# TYPE a gauge\na{x="1"} 1\na{x="1"} 2\n'],
    ['a bucket without le', '# TYPE h histogram\nh_bucket 1\n'],
    ['an unknown type', '# TYPE a thing\n']
  ])('refuses %s', (_what, text) => {
    expect(() => parsePrometheusText(text)).toThrow()
  })
})
