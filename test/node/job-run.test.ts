import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { getOperator } from '../../src/compute/operators/index.ts'
import { hostTensor } from '../../src/compute/tensor.ts'
import { Job } from '../../src/node/jobs/job.ts'
import { JobRun } from '../../src/node/jobs/job-run.ts'
import { RemoteShardError } from '../../src/protocol/shard/index.ts'
import { explainUnused } from '../../src/node/jobs/coordinator.ts'
import { planShards } from '../../src/node/jobs/split.ts'
import { PeerDirectory } from '../../src/node/peer-directory.ts'
import { silentLogger } from '../../src/node/log.ts'
import { DEFAULT_WIRE_LIMITS } from '../../src/protocol/limits.ts'
import type { ExecutorPool, RunResult } from '../../src/compute/index.ts'
import type { ShardTask, Tensors } from '../../src/compute/operators/types.ts'
import type { Participant } from '../../src/node/jobs/job-run.ts'
import type { OutgoingShard, ShardOutcome } from '../../src/protocol/shard/index.ts'
import type { Libp2p } from '@libp2p/interface'

/**
 * JobRun's dispatch and backup rules on a simulated mesh: copies finish when
 * the test says so, on a fake clock, so nothing here depends on how busy
 * the machine is. Each copy's answer is computed for real (x * 2) and the
 * reduced result is checked element by element.
 */

const SELF = 'self'
const map = getOperator('map')
const ROWS = 3000
const COLS = 1000

interface Pending {
  peer: string
  index: number
  signal: AbortSignal
  finish: (computeMs: number) => void
  /** The peer refuses the copy: over its limit per coordinator. */
  refuse: () => void
}

function double (task: ShardTask): Tensors {
  const x = task.inputs.x
  if (x === undefined) throw new Error('no x')
  const out = new Float32Array(x.data.length)
  for (let i = 0; i < out.length; i++) out[i] = 2 * (x.data[i] ?? 0)
  return { out: hostTensor('float32', [...x.shape], out) }
}

/** A mesh of one local participant and remote ones; remote copies wait for `finish`. */
function simulate (participants: Participant[], shardsPerPeer: number, localMs: number) {
  const data = new Float32Array(ROWS * COLS)
  for (let i = 0; i < data.length; i++) data[i] = (i % 977) - 488
  const inputs = { x: hostTensor('float32', [ROWS, COLS], data) }
  const params = { ops: [{ op: 'mul', value: 2 }] }
  const job = new Job({ id: 'job-1', op: 'map', params, inputs, verify: { replicas: 1, spotCheck: 0, rtol: 1e-3 } })
  job.plan = map.plan(inputs, params)
  const planned = planShards(ROWS, participants.map(p => ({ peer: p.peer, unitsPerSecond: p.rate, maxUnits: ROWS })), shardsPerPeer)
  job.shards = planned.map(s => ({ index: s.index, start: s.start, end: s.end, state: 'pending', attempts: 0, bytesIn: 0, bytesOut: 0, history: [] }))
  const pending: Pending[] = []
  const local: number[] = []
  const pool = {
    run: async (task: ShardTask, options: { signal?: AbortSignal }): Promise<RunResult> => {
      local.push(pending.length)
      return await new Promise<RunResult>((resolve, reject) => {
        const timer = setTimeout(() => { resolve({ partial: double(task), computeMs: localMs }) }, localMs)
        options.signal?.addEventListener('abort', () => { clearTimeout(timer); reject(options.signal?.reason) })
      })
    }
  } as unknown as ExecutorPool
  const send = async (peer: string, shard: OutgoingShard, signal: AbortSignal): Promise<ShardOutcome> =>
    await new Promise<ShardOutcome>((resolve, reject) => {
      const bytes = shard.task.inputs.x?.data.byteLength ?? 0
      pending.push({
        peer,
        index: shard.index,
        signal,
        finish: (computeMs) => { resolve({ partial: double(shard.task), computeMs, bytesOut: bytes, bytesIn: bytes }) },
        refuse: () => { reject(new RemoteShardError('ERR_PEER_OVER_LIMIT', 'this node already runs or queues 5 shards for you')) }
      })
      signal.addEventListener('abort', () => { reject(signal.reason) })
    })
  const directory = new PeerDirectory({ expiryMs: 60_000 })
  const run = new JobRun({
    libp2p: { peerId: { toString: () => SELF } } as unknown as Libp2p,
    directory, pool, log: silentLogger(), send
  }, {
    job, op: map, inputs, participants, preferred: planned.map(s => s.preferred),
    verify: job.verify, backups: true, limits: DEFAULT_WIRE_LIMITS
  })
  const result = run.run()
  const check = async (): Promise<void> => {
    const out = await result
    let wrong = 0
    for (let i = 0; i < data.length; i++) if (out.data[i] !== 2 * (data[i] ?? 0)) wrong++
    expect(wrong).toBe(0)
  }
  return { job, pending, local, check, stop: () => { directory.stop() } }
}

const participant = (peer: string, slots: number, rate: number): Participant =>
  ({ peer, local: peer === SELF, rate, slots, limit: peer === SELF ? slots : slots + 1, inflight: 0, excluded: false })

describe('job dispatch', () => {
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'performance', 'Date'] })
  })
  afterEach(() => {
    vi.useRealTimers()
  })

  it('a coordinator with idle workers does not take a shard cut for a peer before that peer had it', async () => {
    // The 3-host netns run: two local workers, one shard per peer; the third shard used to run locally.
    const sim = simulate([participant(SELF, 2, 40_000), participant('b', 1, 20_000), participant('c', 1, 20_000)], 1, 100)
    expect(sim.pending.map(p => [p.peer, p.index])).toEqual([['b', 1], ['c', 2]])
    expect(sim.local).toHaveLength(1)
    await vi.advanceTimersByTimeAsync(100)
    for (const p of sim.pending) p.finish(100)
    await sim.check()
    expect(sim.job.shards.map(s => s.peer)).toEqual([SELF, 'b', 'c'])
    sim.stop()
  })

  it('a remote copy slower than a local one only by its transfer gets no backup', async () => {
    // Local copies compute in 100 ms; remote ones take 600 ms, 500 of them moving 8 MB (16 MB/s).
    const sim = simulate([participant(SELF, 1, 20_000), participant('b', 1, 20_000), participant('c', 1, 20_000)], 1, 100)
    await vi.advanceTimersByTimeAsync(600)
    expect(sim.pending).toHaveLength(2)
    for (const p of sim.pending) p.finish(100)
    await sim.check()
    for (const s of sim.job.shards) expect(s.history.map(h => h.kind)).toEqual(['first'])
    expect(sim.job.shards.map(s => s.peer)).toEqual([SELF, 'b', 'c'])
    sim.stop()
  })

  it('a copy that runs far past what its peer should take is backed up, and the backup wins', async () => {
    const sim = simulate([participant(SELF, 1, 20_000), participant('b', 1, 20_000), participant('c', 1, 20_000)], 1, 100)
    await vi.advanceTimersByTimeAsync(600)
    sim.pending.find(p => p.peer === 'b')?.finish(100)
    // c never answers. Its copy should take about 600 ms (b's pace and link): no backup before 1.5x that.
    await vi.advanceTimersByTimeAsync(250)
    expect(sim.job.shards[2]?.history.map(h => h.kind)).toEqual(['first'])
    await vi.advanceTimersByTimeAsync(1000)
    await sim.check()
    const frozen = sim.job.shards[2]
    expect(frozen?.history.map(h => h.kind)).toEqual(['first', 'backup'])
    expect(frozen?.peer).not.toBe('c')
    expect(sim.pending.find(p => p.peer === 'c')?.signal.aborted).toBe(true)
    sim.stop()
  })

  it("in the tail, an idle fast peer backs up a slow peer's copy that keeps its own pace, when that saves over a second", async () => {
    // 'slow' has 8 slots at 250 rows/s in all: its share (333 rows) is cut in two shards, each on one
    // slot at 31 rows/s: 5.3 s each, on its pace all along. The coordinator's own two take 667 ms each.
    const sim = simulate([participant(SELF, 1, 2000), participant('slow', 8, 250)], 2, 667)
    // 'slow' has idle slots, so it also takes (steals) the coordinator's second shard: 1,333 rows, 43 s there.
    await vi.advanceTimersByTimeAsync(1500)
    const onSlow = sim.job.shards.filter(s => s.history[0]?.peer === 'slow')
    expect(onSlow.length).toBeGreaterThanOrEqual(2)
    // The coordinator has been idle since 0.67 s with nothing waiting. No copy is late for its own peer
    // (the oldest has run 1.5 s of at least 5.3), so only the tail rule starts a backup here.
    expect(onSlow.filter(s => s.history.some(h => h.kind === 'backup')).length).toBeGreaterThanOrEqual(1)
    await vi.advanceTimersByTimeAsync(5000)
    await sim.check()
    // Done in 6.5 s, well before the slow peer's own copies would have been (5.3 s and more, one queued behind another).
    expect(onSlow.every(s => s.peer === SELF)).toBe(true)
    sim.stop()
  })

  it('a peer over its limit is sent fewer shards at once, not dropped; at one at a time, a refusal counts as its failure', async () => {
    const b: Participant = { ...participant('b', 1, 20_000), limit: 3 }
    const sim = simulate([participant(SELF, 1, 20_000), b], 4, 100)
    const first = sim.pending.filter(p => p.peer === 'b')
    expect(first).toHaveLength(3)
    first[0]?.refuse()
    await vi.advanceTimersByTimeAsync(0)
    expect(b.limit).toBe(2)
    expect(b.excluded).toBe(false)
    // The refused shard waits for b again: its other two copies still fill its limit.
    expect(sim.pending.filter(p => p.peer === 'b' && !p.signal.aborted)).toHaveLength(3)
    first[1]?.refuse()
    await vi.advanceTimersByTimeAsync(0)
    expect(b.limit).toBe(1)
    const third = sim.pending.filter(p => p.peer === 'b').at(-1)
    third?.refuse()
    await vi.advanceTimersByTimeAsync(0)
    expect(b.excluded).toBe(true)
    // The rest runs: b's last copy finishes, the local worker takes what b was refused.
    first[2]?.finish(100)
    await vi.advanceTimersByTimeAsync(2000)
    await sim.check()
    const refusals = sim.job.shards.flatMap(s => s.history).filter(h => h.error !== undefined)
    expect(refusals).toHaveLength(3)
    for (const s of sim.job.shards) expect(s.state).toBe('done')
    sim.stop()
  })

  it('the job record says why a peer that bid ran no shard', async () => {
    // 3 rows for four peers: one share rounds to zero.
    const sim = simulate([participant(SELF, 1, 20_000), participant('b', 1, 20_000), participant('c', 1, 20_000)], 1, 100)
    await vi.advanceTimersByTimeAsync(600)
    for (const p of sim.pending) p.finish(100)
    await sim.check()
    sim.job.bids = [
      { peer: SELF, accept: true, planned: 1 }, { peer: 'b', accept: true, planned: 1 }, { peer: 'c', accept: true, planned: 1 },
      { peer: 'd', accept: true, planned: 0 }, { peer: 'e', accept: false, reason: 'node is shutting down' }
    ]
    explainUnused(sim.job, [])
    expect(sim.job.bids.map(b => b.ran)).toEqual([1, 1, 1, 0, undefined])
    expect(sim.job.bids[3]?.unused).toMatch(/rounded to zero/)
    expect(sim.job.bids.slice(0, 3).every(b => b.unused === undefined)).toBe(true)
    sim.stop()
  })
})
