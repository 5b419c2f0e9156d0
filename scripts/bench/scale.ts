/**
 * The scale section: hundreds of real nodes (MeshNode: libp2p, gossipsub,
 * noise, yamux, the capacity service, the connection keeper, the
 * coordinator) in this one process on loopback TCP. What is reduced is the
 * compute: each node gets a ModelPool, an executor pool without worker
 * threads that runs `map` (relu) shards on the main thread in JS and holds
 * each shard for a modelled time (UNIT_MS per row per slot, divided by the
 * node's speed), so that 200 nodes fit on 2 cores and the makespan of a
 * 1,000-shard job can be compared with its ideal.
 *
 * For each N it measures, after the mesh has settled:
 *  - control traffic per node: bytes received per second (libp2p's global
 *    counter) in a window with no job running: adverts, gossip, hellos,
 *    identify, pings;
 *  - connections per node (outside jobs), mean and max;
 *  - adverts heard per node per second (unique) and the regime;
 *  - bid requests of a 1,000-unit job (1,000 shards) and its makespan against
 *    the ideal on the peers that accepted (total work / their capacity);
 *  - the time for a newcomer to be usable: it and three others know each other.
 */
import { mkdtemp, rm, readFile, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance as perf } from 'node:perf_hooks'
import { ExecutorPool } from '../../src/compute/index.ts'
import { hostTensor } from '../../src/compute/tensor.ts'
import { MeshNode } from '../../src/node/mesh-node.ts'
import { silentLogger } from '../../src/node/log.ts'
import { SAMPLE_WINDOW_MS } from '../../src/protocol/capacity/index.ts'
import type { RunOptions, RunResult } from '../../src/compute/pool.ts'
import type { ShardTask } from '../../src/compute/operators/types.ts'
import type { HostTensor } from '../../src/compute/tensor.ts'

/**
 * The bench's advert interval: 15x the default, so that the full regime's
 * meshes fit in one process on 2 cores. Every copy of an advert costs its
 * receiver ~0.3 ms (noise, yamux, protobuf, the signature check); 60 nodes
 * at 10 s are ~2,000 copies a second, a whole core (profiled). The full
 * regime's traffic scales as 1/interval (the default's is 15x these
 * figures); the sampled regime's mesh-wide rate (SAMPLED_ADVERTS_PER_SEC)
 * does not depend on it.
 */
export const BENCH_ADVERT_INTERVAL_MS = 30_000

/** Modelled time of one row on one slot of a speed-1 node. */
export const UNIT_MS = 1200
/** Columns of the job's rows: `map` costs one flop per element per op. */
const COLS = 1024
const SLOTS = 2
/** Node i's speed: a 4:2:1 mix, so the split has something to weigh. */
const speedOf = (i: number): number => [0.5, 1, 1, 2][i % 4] ?? 1

/**
 * An executor pool without workers: `map` with relu only, computed here,
 * held for the modelled time. Its GFLOPS are the modelled rate, so bids and
 * the split see each node's real share.
 */
export class ModelPool extends ExecutorPool {
  readonly speed: number
  private running = 0
  private readonly waiting: Array<() => void> = []

  constructor (speed: number) {
    super({ workers: 1, backend: 'cpu' })
    this.speed = speed
  }

  override get backend (): 'cpu' { return 'cpu' }
  override get slots (): number { return SLOTS }
  override get busy (): number { return this.running }
  override get queued (): number { return this.waiting.length }
  /** Rows per second x flops per row: what a bid for `map` on COLS columns will price. */
  override get gflops (): number { return SLOTS * this.speed * (1000 / UNIT_MS) * COLS / 1e9 }
  override get operators (): string[] { return ['map'] }
  override get gpu (): undefined { return undefined }
  override async start (): Promise<void> {}
  override async stop (): Promise<void> {}

  override async run (task: ShardTask, options: RunOptions = {}): Promise<RunResult> {
    if (task.op !== 'map') throw new Error(`ModelPool runs map only, not ${task.op}`)
    const x = task.inputs.x as HostTensor
    if (this.running >= SLOTS) await new Promise<void>(resolve => { this.waiting.push(resolve) })
    this.running++
    this.dispatchEvent(new CustomEvent('change'))
    const t0 = performance.now()
    try {
      const rows = x.shape[0] ?? 0
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(resolve, rows * UNIT_MS / this.speed)
        options.signal?.addEventListener('abort', () => { clearTimeout(timer); reject(new Error('aborted')) }, { once: true })
      })
      const out = new Float32Array(x.data.length)
      for (let i = 0; i < out.length; i++) out[i] = Math.max(0, Number(x.data[i]))
      return { partial: { out: hostTensor('float32', [...x.shape], out) }, computeMs: performance.now() - t0 }
    } finally {
      this.running--
      this.waiting.shift()?.()
      this.dispatchEvent(new CustomEvent('change'))
    }
  }
}

export interface ScaleRecord {
  n: number
  kind: 'real'
  controlBytesPerNodePerSec: number
  connectionsPerNode: number
  connectionsMax: number
  bidsPerJob: number
  shardsPerJob: number
  makespanRatio: number
  jobsLost: number
  advertsHeardPerNodePerSec: number
  /** Bytes of one advert as encoded (the gossip message adds its signature, key, topic and framing). */
  advertBytes: number
  regime: string
  meshEstimate: number
  newcomerUsableMs: number
  makespanMs: number
  /** Share of the job's time this process's one event loop (every node's libp2p) was busy. */
  jobEventLoopBusy: number
  idealMs: number
  windowS: number
  transport: string
}

const bytesIn = async (node: MeshNode): Promise<number> => {
  const text = (await node.metrics.text()).body
  const m = /libp2p_data_transfer_bytes_total\{protocol="global received"\} (\d+(?:\.\d+)?(?:e\+\d+)?)/.exec(text)
  return m === null ? 0 : Number(m[1])
}

async function until (what: string, cond: () => boolean, timeoutMs: number): Promise<void> {
  const t0 = performance.now()
  while (!cond()) {
    if (performance.now() - t0 > timeoutMs) throw new Error(`${what}: not within ${timeoutMs} ms`)
    await new Promise(resolve => setTimeout(resolve, 100))
  }
}

/** Starts `n` nodes, bootstrapping each to up to three random earlier ones. */
async function startMesh (n: number, dir: string, shardsPerPeer: number): Promise<{ nodes: MeshNode[], speeds: Map<string, number> }> {
  const nodes: MeshNode[] = []
  const speeds = new Map<string, number>()
  for (let i = 0; i < n; i++) {
    const boot = [...nodes].sort(() => Math.random() - 0.5).slice(0, 3).flatMap(m => m.multiaddrs().slice(0, 1))
    const node = newNode(join(dir, String(i)), i, boot, shardsPerPeer)
    await node.start()
    nodes.push(node)
    speeds.set(node.peerId.toString(), (node.pool as ModelPool).speed)
  }
  return { nodes, speeds }
}

function newNode (dataDir: string, i: number, bootstrap: string[], shardsPerPeer: number): MeshNode {
  return new MeshNode({
    dataDir,
    listen: ['/ip4/127.0.0.1/tcp/0'],
    api: false,
    journal: false,
    bulk: false,
    relay: false,
    shardsPerPeer,
    bootstrap,
    advertIntervalMs: BENCH_ADVERT_INTERVAL_MS,
    pool: new ModelPool(speedOf(i)),
    logger: silentLogger()
  })
}

export async function benchScale (sizes: number[], log: (msg: string) => void): Promise<ScaleRecord[]> {
  const out: ScaleRecord[] = []
  for (const n of sizes) {
    const dir = await mkdtemp(join(tmpdir(), `tm-scale-${n}-`))
    const t0 = performance.now()
    const { nodes, speeds } = await startMesh(n, dir, 1000)
    log(`scale: ${n} nodes started in ${Math.round(performance.now() - t0)} ms`)
    try {
      // Settled: the full regime has everyone; the sampled one a window of adverts and its estimate.
      const settledBy = performance.now() + (n > 64 ? SAMPLE_WINDOW_MS + 10_000 : 0)
      if (n <= 64) await until(`every node sees ${n - 1} peers`, () => nodes.every(m => m.directory.size >= n - 1), 120_000)
      else await until('a sample window', () => performance.now() >= settledBy, SAMPLE_WINDOW_MS + 60_000)
      // Quiet window: no job runs; what arrives is the control plane. Two whole intervals: nodes
      // started within seconds of each other tick together, so a shorter window can miss a round.
      const windowMs = 2 * BENCH_ADVERT_INTERVAL_MS
      const before = await Promise.all(nodes.map(bytesIn))
      const heardBefore = nodes.map(m => m.info().adverts.accepted)
      const w0 = performance.now()
      await new Promise(resolve => setTimeout(resolve, windowMs))
      const after = await Promise.all(nodes.map(bytesIn))
      const secs = (performance.now() - w0) / 1000
      const heard = nodes.map((m, i) => (m.info().adverts.accepted - (heardBefore[i] ?? 0)) / secs)
      const rates = after.map((b, i) => (b - (before[i] ?? 0)) / secs)
      const conns = nodes.map(m => m.libp2p.getPeers().length)
      const infos = nodes.map(m => m.info().adverts)
      const sampled = infos.filter(a => a.regime === 'sampled').length
      log(`scale: ${n} nodes, ${Math.round(mean(rates))} B/s in per node, ${mean(conns).toFixed(1)} peers (max ${Math.max(...conns)}), ${mean(heard).toFixed(2)} adverts/s heard, ${sampled} sampled, estimate ${Math.round(mean(infos.map(a => a.meshEstimate)))}`)

      // A 1,000-row map job, one row per shard (shardsPerPeer 1000), from a random node.
      const coord = nodes[Math.floor(Math.random() * n)] as MeshNode
      const x = hostTensor('float32', [1000, COLS], Float32Array.from({ length: 1000 * COLS }, (_, k) => (k % 7) - 3))
      const j0 = performance.now()
      const elu0 = eventLoopUtilization()
      const job = coord.submit({ op: 'map', inputs: { x }, params: { ops: [{ op: 'relu' }] } })
      let lost = 0
      try {
        await job.result()
      } catch (err) {
        lost = 1
        log(`scale: job failed: ${err instanceof Error ? err.message : String(err)}`)
      }
      const makespanMs = performance.now() - j0
      // All N nodes share this one event loop: how busy it was says whether the makespan is the protocol's or this process's.
      const jobLoopBusy = eventLoopUtilization(elu0).utilization
      const accepted = job.bids.filter(b => b.accept)
      const capacity = accepted.reduce((s, b) => s + SLOTS * (speeds.get(b.peer) ?? 1), 0)
      const idealMs = 1000 * UNIT_MS / Math.max(capacity, 1e-9)
      const bids = job.bids.length - 1

      // A newcomer, bootstrapped to three random nodes: usable once it and three others know each other.
      const boot = [...nodes].sort(() => Math.random() - 0.5).slice(0, 3)
      const newcomer = newNode(join(dir, 'newcomer'), n, boot.flatMap(m => m.multiaddrs().slice(0, 1)), 1000)
      const u0 = performance.now()
      await newcomer.start()
      const id = newcomer.peerId.toString()
      await until('newcomer known', () => newcomer.directory.size >= 3 && nodes.filter(m => m.directory.has(id)).length >= 3, 60_000)
      const usableMs = performance.now() - u0
      nodes.push(newcomer)

      const rec: ScaleRecord = {
        n,
        kind: 'real',
        controlBytesPerNodePerSec: Math.round(mean(rates)),
        connectionsPerNode: round1(mean(conns)),
        connectionsMax: Math.max(...conns),
        bidsPerJob: bids,
        shardsPerJob: job.shards.length,
        makespanRatio: round2(makespanMs / idealMs),
        jobsLost: lost,
        advertsHeardPerNodePerSec: round2(mean(heard)),
        // Nodes the sampled regime has not picked yet have published nothing: count those that have.
        advertBytes: Math.round(mean(infos.map(a => a.lastAdvertBytes).filter(b => b > 0))),
        regime: sampled > n / 2 ? 'sampled' : 'full',
        meshEstimate: Math.round(mean(infos.map(a => a.meshEstimate))),
        newcomerUsableMs: Math.round(usableMs),
        makespanMs: Math.round(makespanMs),
        jobEventLoopBusy: round2(jobLoopBusy),
        idealMs: Math.round(idealMs),
        windowS: Math.round(secs),
        transport: 'one process, loopback TCP, noise, yamux; ModelPool (no workers)'
      }
      log(`scale: ${JSON.stringify(rec)}`)
      out.push(rec)
    } finally {
      await Promise.all(nodes.map(async m => { await m.stop().catch(() => {}) }))
      await rm(dir, { recursive: true, force: true })
    }
  }
  return out
}

/** Writes the real records into bench/scale.json beside the simulated ones (same n replaced). */
export async function saveScaleRecords (records: ScaleRecord[], file: URL): Promise<void> {
  let all: Array<{ n: number, kind: string }> = []
  try {
    all = JSON.parse(await readFile(file, 'utf8')) as typeof all
  } catch {}
  const fresh = new Set(records.map(r => r.n))
  all = all.filter(r => !(r.kind === 'real' && fresh.has(r.n)))
  all.push(...records)
  all.sort((a, b) => a.n - b.n || a.kind.localeCompare(b.kind))
  await writeFile(file, JSON.stringify(all, null, 2) + '\n')
}

const eventLoopUtilization = perf.eventLoopUtilization.bind(perf)
const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / Math.max(xs.length, 1)
const round1 = (x: number): number => Math.round(x * 10) / 10
const round2 = (x: number): number => Math.round(x * 100) / 100

/**
 * What the simulator needs from real runs (bench/scale-calibration.json): an
 * advert's bytes on the wire (the encoded advert plus ~140 B of gossip
 * message: signature 64, author 38, seqno 8, topic and framing), and, fitted
 * by least squares over the sizes, the copies of each advert a node receives
 * and the bytes each connection costs a second besides (keep-alives,
 * identify, IHAVE gossip).
 */
export async function writeScaleCalibration (records: ScaleRecord[], file: URL): Promise<void> {
  const wire = mean(records.map(r => r.advertBytes)) + 140
  // bytes = heard x wire x copies + conns x baseline: two unknowns, normal equations.
  const xs = records.map(r => [r.advertsHeardPerNodePerSec * wire, r.connectionsPerNode])
  const ys = records.map(r => r.controlBytesPerNodePerSec)
  let a = 0; let b = 0; let c = 0; let d = 0; let e = 0
  xs.forEach(([u = 0, v = 0], i) => { a += u * u; b += u * v; c += v * v; d += u * (ys[i] ?? 0); e += v * (ys[i] ?? 0) })
  const det = a * c - b * b
  const copies = det !== 0 ? (d * c - b * e) / det : 4
  const baseline = det !== 0 ? (a * e - b * d) / det : 10
  const calibration = {
    advertWireBytes: Math.round(wire),
    copiesPerAdvert: Math.round(copies * 100) / 100,
    baselineBytesPerConnPerSec: Math.round(baseline * 10) / 10,
    source: `npm run bench -- --only scale, sizes ${records.map(r => r.n).join(', ')}, ${new Date().toISOString().slice(0, 10)}`
  }
  await writeFile(file, JSON.stringify(calibration, null, 2) + '\n')
}
