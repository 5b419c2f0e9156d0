/**
 * `npm run bench`: tensormesh's figures, each against a baseline measured in
 * the same run (the machine is shared and noisy, so only ratios are stable).
 * Writes bench/results.json and bench/results.md.
 *
 *   npm run bench                      every section
 *   npm run bench -- --only mesh,transfer
 */
import { execFileSync, fork } from 'node:child_process'
import { mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises'
import { connect } from 'node:net'
import { availableParallelism, cpus, tmpdir, totalmem } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { Worker } from 'node:worker_threads'
import { decodeNpy, encodeNpy } from '../src/compute/npy.ts'
import { ExecutorPool } from '../src/compute/pool.ts'
import { prng } from '../src/compute/random.ts'
import type { HostTensor } from '../src/compute/tensor.ts'
import { ApiClient } from '../src/node/client/api-client.ts'
import { RemoteJob } from '../src/node/client/mesh-client.ts'
import { createLogger, silentLogger } from '../src/node/log.ts'
import { readSwarmKey, writeSwarmKey } from '../src/node/access/index.ts'
import { MeshNode } from '../src/node/mesh-node.ts'
import { Testnet, log, median, randomTensor, runJob, sleep, startCli } from './bench/lib.ts'
import { BENCH_ADVERT_INTERVAL_MS, ModelPool, benchScale, saveScaleRecords, writeScaleCalibration } from './bench/scale.ts'
import { peerIdFromString } from '@libp2p/peer-id'
import { EXAMPLE_PHOTOS, writeExampleModels, writeExamplePhotos } from './examples-models.ts'
import { packImages } from '../src/compute/images.ts'
import { packModel, readModelDir } from '../src/compute/model.ts'
import type { PeerView } from '../src/node/api/server.ts'
import type { JobView } from '../src/node/jobs/job.ts'

interface Figure {
  section: string
  name: string
  value: number
  unit: string
  baseline?: { name: string, value: number, unit: string }
  /** value / baseline (or the inverse where smaller is better, as `better` says). */
  ratio?: number
  goal?: string
  note?: string
}

const figures: Figure[] = []
function record (f: Figure): void {
  figures.push(f)
  log(`${f.section}: ${f.name} = ${round(f.value)} ${f.unit}${f.baseline !== undefined ? ` (baseline ${f.baseline.name} ${round(f.baseline.value)} ${f.baseline.unit}, ratio ${round(f.ratio ?? NaN)})` : ''}`)
}
const round = (x: number): number => Math.abs(x) >= 100 ? Math.round(x) : Math.round(x * 100) / 100

const { values } = parseArgs({ options: { only: { type: 'string' }, 'fault-rows': { type: 'string' }, 'scale-sizes': { type: 'string' } } })
const sections = values.only?.split(',') ?? ['compute', 'pool', 'mesh', 'overhead', 'transfer', 'trust', 'convergence', 'faults', 'scaling', 'images', 'train', 'scale']
const started = Date.now()

// ---------------------------------------------------------------- compute
async function kernel (backend: string, sizes: number[], budgetMs: number): Promise<{ backend: string, results: Array<{ n: number, gflops: number, runs: number }> }> {
  const w = new Worker(new URL('./bench/kernel-worker.ts', import.meta.url), { workerData: { backend, sizes, budgetMs } })
  try {
    return await new Promise((resolve, reject) => {
      w.once('message', resolve)
      w.once('error', reject)
    })
  } finally {
    await w.terminate()
  }
}

function numpyGflops (sizes: number[]): Record<number, number> | undefined {
  const code = `
import numpy as np, time, json, sys
out = {}
for n in json.loads(sys.argv[1]):
    a = np.random.rand(n, n).astype(np.float32); b = np.random.rand(n, n).astype(np.float32)
    a @ b
    times = []
    t_end = time.perf_counter() + 1.5
    while len(times) < 3 or (time.perf_counter() < t_end and len(times) < 15):
        t0 = time.perf_counter(); a @ b; times.append(time.perf_counter() - t0)
    times.sort()
    out[n] = 2 * n**3 / times[len(times) // 2] / 1e9
print(json.dumps(out))
`
  // OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE slow a current numpy on this machine; unset both for the reference.
  const env = { ...process.env }
  delete env.OPENBLAS_CORETYPE
  delete env.OPENBLAS_L2_SIZE
  try {
    const out = execFileSync('python3', ['-c', code, JSON.stringify(sizes)], { env, encoding: 'utf8' })
    return JSON.parse(out) as Record<number, number>
  } catch {
    return undefined
  }
}

async function computeSection (): Promise<void> {
  const sizes = [256, 512, 1024, 2048]
  const ref = numpyGflops(sizes)
  for (const backend of ['wasm', 'cpu']) {
    // The plain JS backend needs ~15 s for one 2048 product; 1024 shows its rate.
    const own = await kernel(backend, backend === 'cpu' ? [256, 512, 1024] : sizes, 1500).catch(() => undefined)
    if (own === undefined) continue
    for (const r of own.results) {
      const base = ref?.[r.n]
      record({ section: 'compute', name: `matmul ${r.n} ${own.backend}, 1 worker`, value: r.gflops, unit: 'GFLOPS', ...(base !== undefined ? { baseline: { name: 'numpy (OpenBLAS, all cores)', value: base, unit: 'GFLOPS' }, ratio: r.gflops / base } : {}) })
    }
  }
  // The default backend with one worker per core, all at once, against numpy.
  const pool = new ExecutorPool({ backend: 'auto' })
  await pool.start()
  const n = 1024
  const a = randomTensor([n, n], 1)
  const b = randomTensor([n, n], 2)
  const task = { op: 'matmul', params: {}, inputs: { a, b }, shared: ['b'] }
  await Promise.all(Array.from({ length: pool.slots }, async () => await pool.run(task)))
  const t0 = performance.now()
  const count = pool.slots * 6
  await Promise.all(Array.from({ length: count }, async () => await pool.run(task)))
  const gflops = count * 2 * n ** 3 / ((performance.now() - t0) / 1000) / 1e9
  const base = ref?.[n]
  record({ section: 'compute', name: `matmul ${n} ${pool.backend}, ${pool.slots} workers (one per core)`, value: gflops, unit: 'GFLOPS', ...(base !== undefined ? { baseline: { name: 'numpy (OpenBLAS, all cores)', value: base, unit: 'GFLOPS' }, ratio: gflops / base } : {}), goal: '>= 0.30 of numpy' })
  record({ section: 'compute', name: `calibrated at start (${pool.backend}, ${pool.slots} workers, 256x256)`, value: pool.gflops, unit: 'GFLOPS' })
  await pool.stop()
}

// ---------------------------------------------------------------- pool
async function poolSection (): Promise<void> {
  const rates: Record<number, number> = {}
  const n = 512
  const task = { op: 'matmul', params: {}, inputs: { a: randomTensor([n, n], 3), b: randomTensor([n, n], 4) }, shared: ['b'] }
  for (const workers of [1, availableParallelism()]) {
    const pool = new ExecutorPool({ backend: 'auto', workers, calibrate: false })
    await pool.start()
    await Promise.all(Array.from({ length: workers }, async () => await pool.run(task)))
    const samples: number[] = []
    for (let rep = 0; rep < 3; rep++) {
      const count = 24
      const t0 = performance.now()
      await Promise.all(Array.from({ length: count }, async () => await pool.run(task)))
      samples.push(count / ((performance.now() - t0) / 1000))
    }
    rates[workers] = median(samples)
    await pool.stop()
  }
  const one = rates[1] ?? NaN
  const all = rates[availableParallelism()] ?? NaN
  record({ section: 'pool', name: 'matmul 512 tasks/s, 1 worker', value: one, unit: 'tasks/s' })
  record({ section: 'pool', name: `matmul 512 tasks/s, ${availableParallelism()} workers`, value: all, unit: 'tasks/s', baseline: { name: '1 worker', value: one, unit: 'tasks/s' }, ratio: all / one })
}

// ---------------------------------------------------------------- mesh
async function meshSection (): Promise<void> {
  const n = 2048
  const a = randomTensor([n, n], 5)
  const b = randomTensor([n, n], 6)
  // TF.js in one process, same backend, one worker: the whole product as one task.
  const pool = new ExecutorPool({ backend: 'auto', workers: 1, calibrate: false })
  await pool.start()
  await pool.run({ op: 'matmul', params: {}, inputs: { a, b } })
  const local: number[] = []
  for (let rep = 0; rep < 3; rep++) {
    const t0 = performance.now()
    await pool.run({ op: 'matmul', params: {}, inputs: { a, b } })
    local.push(performance.now() - t0)
  }
  await pool.stop()
  const inProcess = median(local)
  const times: Record<number, number> = {}
  for (const nodes of [1, 2]) {
    const net = await Testnet.start(nodes, ['--workers', '1'])
    try {
      await runJob(net.node(0).api, 'matmul', { a, b }) // warm: kernels compiled, b cached
      const samples: number[] = []
      for (let rep = 0; rep < 3; rep++) {
        const job = await runJob(net.node(0).api, 'matmul', { a, b })
        samples.push(jobMs(job))
      }
      times[nodes] = median(samples)
    } finally {
      await net.stop()
    }
  }
  const one = times[1] ?? NaN
  const two = times[2] ?? NaN
  record({ section: 'mesh', name: 'matmul 2048, TF.js in one process (1 worker)', value: inProcess, unit: 'ms' })
  record({ section: 'mesh', name: 'matmul 2048 on a 1-node testnet (1 worker)', value: one, unit: 'ms', baseline: { name: 'TF.js in one process', value: inProcess, unit: 'ms' }, ratio: inProcess / one, note: 'ratio = in-process time / mesh time (1 = no overhead)' })
  record({ section: 'mesh', name: 'matmul 2048 on a 2-node testnet (1 worker each)', value: two, unit: 'ms', baseline: { name: '1-node testnet', value: one, unit: 'ms' }, ratio: one / two, goal: 'speedup >= 1.7', note: 'ratio = speedup over one node' })
  record({ section: 'mesh', name: 'matmul 2048 on a 2-node testnet vs TF.js in one process', value: two, unit: 'ms', baseline: { name: 'TF.js in one process', value: inProcess, unit: 'ms' }, ratio: inProcess / two, note: 'ratio = speedup over one process' })
}

/** Coordinator time of a job: from its start (after the upload was parsed) to its end. */
function jobMs (job: JobView): number {
  return Date.parse(job.finishedAt ?? '') - Date.parse(job.startedAt ?? job.createdAt)
}

// ---------------------------------------------------------------- overhead
async function overheadSection (): Promise<void> {
  const x = randomTensor([512, 1], 7)
  const params = { ops: [{ op: 'add', value: 1 }] }
  // In process: the same tiny task through the executor pool, as the coordinator runs its own.
  const pool = new ExecutorPool({ backend: 'auto', workers: 1, calibrate: false })
  await pool.start()
  const tiny = { op: 'map', params, inputs: { x: randomTensor([2, 1], 8) } }
  for (let i = 0; i < 50; i++) await pool.run(tiny)
  const rtts: number[] = []
  for (let i = 0; i < 300; i++) {
    const t0 = performance.now()
    await pool.run(tiny)
    rtts.push(performance.now() - t0)
  }
  // Keep the pool's bounded queue fed, not overfilled: 16 tasks in flight.
  const count = 1000
  let issued = 0
  const t0 = performance.now()
  await Promise.all(Array.from({ length: 16 }, async () => {
    while (issued < count) {
      issued++
      await pool.run(tiny)
    }
  }))
  const inProcessRate = count / ((performance.now() - t0) / 1000)
  await pool.stop()

  const net = await Testnet.start(2, ['--workers', '1'])
  try {
    const api = net.node(0).api
    const remote = net.node(1).peerId
    await runJob(api, 'map', { x }, params, { schedule: { shardsPerPeer: 64 } })
    const rates: number[] = []
    for (let rep = 0; rep < 3; rep++) {
      const job = await runJob(api, 'map', { x }, params, { schedule: { shardsPerPeer: 256 } })
      rates.push(job.shards.length / (jobMs(job) / 1000))
    }
    // Round trip of one tiny shard with nothing queued ahead of it: two-row jobs,
    // one shard per peer; the other node's shard is the one measured.
    const remoteMs: number[] = []
    for (let rep = 0; rep < 50; rep++) {
      const job = await runJob(api, 'map', { x: randomTensor([2, 1], 100 + rep) }, params, { schedule: { shardsPerPeer: 1 } })
      for (const s of job.shards) if (s.peer === remote && s.ms !== undefined) remoteMs.push(s.ms)
    }
    // One tiny shard alone: a one-row job per round trip, bid and all.
    const single: number[] = []
    for (let rep = 0; rep < 30; rep++) {
      const job = await runJob(api, 'map', { x: randomTensor([1, 1], rep) }, params)
      single.push(jobMs(job))
    }
    // What one libp2p request and answer costs between these processes (noise, yamux, the swarm
    // key's cipher): a ping from a node in this process to node 1, timed here. Each ping opens a
    // stream, as a shard did before sessions; a shard adds a worker's round trip to it.
    const pinger = new MeshNode({ dataDir: await mkdtemp(join(tmpdir(), 'tm-bench-')), listen: ['/ip4/127.0.0.1/tcp/0'], api: false, serve: false, journal: false, bulk: false, pool: new ModelPool(1), swarmKey: await readSwarmKey(net.swarmKey), bootstrap: net.node(1).multiaddrs, logger: silentLogger() })
    const pings: number[] = []
    await pinger.start()
    try {
      const target = peerIdFromString(remote)
      for (let i = 0; i < 220; i++) {
        const t0 = performance.now()
        await pinger.libp2p.services.ping.ping(target)
        if (i >= 20) pings.push(performance.now() - t0)
      }
    } finally {
      await pinger.stop()
    }
    const rate = median(rates)
    record({ section: 'overhead', name: 'tiny shards/s through bid, shard, result (2-node testnet, 512 shards a job)', value: rate, unit: 'shards/s', baseline: { name: 'same tasks through the executor pool in process', value: inProcessRate, unit: 'tasks/s' }, ratio: rate / inProcessRate, goal: '>= 0.6 of the pool in process', note: 'shards as frames on one session stream per peer; slots + 3 in flight' })
    record({ section: 'overhead', name: 'median round trip of a tiny shard to the other node', value: median(remoteMs), unit: 'ms', baseline: { name: 'same task through the pool in process', value: median(rtts), unit: 'ms' }, ratio: median(remoteMs) / median(rtts), goal: '< 1 ms', note: 'ratio = mesh / in process (lower is better)' })
    record({ section: 'overhead', name: 'median one-row job, submit to result on the coordinator (a fresh acceptance reused: no bid round)', value: median(single), unit: 'ms' })
    record({ section: 'overhead', name: 'median libp2p ping to the other node (a stream opened, 32 bytes each way)', value: median(pings), unit: 'ms', baseline: { name: 'a tiny shard\'s round trip', value: median(remoteMs), unit: 'ms' }, ratio: median(pings) / median(remoteMs), note: 'the floor under a shard that opens a stream; p90 ' + (pings.sort((a, b) => a - b)[Math.floor(pings.length * 0.9)] ?? 0).toFixed(2) + ' ms' })
  } finally {
    await net.stop()
  }
}

// ---------------------------------------------------------------- transfer
async function transferSection (): Promise<void> {
  const bytes = 256 * 1024 * 1024
  // Raw TCP between two processes: the ceiling for any protocol on this machine,
  // once discarding the bytes and once storing them in a fresh buffer as a tensor is.
  const rawTcp = async (store: boolean, reuse = false): Promise<number> => {
    const sink = fork(new URL('./bench/tcp-sink.ts', import.meta.url), [...(store ? ['--store'] : []), ...(reuse ? ['--reuse'] : [])], { stdio: ['ignore', 'pipe', 'inherit', 'ipc'] })
    const port = await new Promise<number>(resolve => {
      sink.stdout?.once('data', (d: Buffer) => { resolve((JSON.parse(d.toString()) as { port: number }).port) })
    })
    const chunk = Buffer.alloc(1024 * 1024, 7)
    const rates: number[] = []
    for (let rep = 0; rep < 3; rep++) {
      const t0 = performance.now()
      await new Promise<void>((resolve, reject) => {
        const sock = connect(port, '127.0.0.1', () => {
          const header = Buffer.alloc(8)
          header.writeBigUInt64LE(BigInt(bytes))
          sock.write(header)
          let sent = 0
          const pump = (): void => {
            while (sent < bytes) {
              sent += chunk.length
              if (!sock.write(chunk)) { sock.once('drain', pump); return }
            }
          }
          pump()
        })
        sock.once('data', () => { sock.destroy(); resolve() })
        sock.once('error', reject)
      })
      rates.push(bytes / 1e6 / ((performance.now() - t0) / 1000))
    }
    sink.kill('SIGTERM')
    return median(rates)
  }
  const raw = await rawTcp(false)
  const rawStored = await rawTcp(true)
  const rawReused = await rawTcp(true, true)

  // The shard protocol, daemon to daemon: this process coordinates (runs no shard itself),
  // one daemon computes; a reduce-sum shard sends 256 MiB and returns a few bytes.
  // Both ends hold one swarm key, as a private mesh's nodes do.
  const keyDir = await mkdtemp(join(tmpdir(), 'tm-bench-'))
  await writeSwarmKey(join(keyDir, 'swarm.key'))
  const daemon = await startCli(['start', '--json', '--listen', '/ip4/127.0.0.1/tcp/0', '--api', '127.0.0.1:0', '--workers', '1', '--data-dir', await mkdtemp(join(tmpdir(), 'tm-bench-')), '--log-level', 'warn', '--swarm-key', join(keyDir, 'swarm.key')])
  const node = new MeshNode({ dataDir: await mkdtemp(join(tmpdir(), 'tm-bench-')), listen: ['/ip4/127.0.0.1/tcp/0'], api: false, serve: false, journal: false, workers: 1, swarmKey: await readSwarmKey(join(keyDir, 'swarm.key')), bootstrap: (JSON.parse(daemon.line) as { multiaddrs: string[] }).multiaddrs, logger: process.env.BENCH_DEBUG !== undefined ? createLogger('debug') : silentLogger() })
  await node.start()
  try {
    while (node.directory.size < 1) await sleep(20)
    const x = randomTensor([bytes / 4 / 1024, 1024], 9)
    const rates: number[] = []
    // Event-loop lag while the bytes move, on both ends: the daemon's from its own metric
    // (prom-client's nodejs_eventloop_lag_p99_seconds, whose histogram resets at each scrape),
    // ours from the same kind of monitor. A blocked loop misses gossip heartbeats.
    const ready = JSON.parse(daemon.line) as { api: string, tokenFile: string | null }
    const metrics = new ApiClient(ready.api, ready.tokenFile !== null ? (await readFile(ready.tokenFile, 'utf8')).trim() : undefined)
    const daemonP99 = async (): Promise<number> => {
      const text = await (await metrics.request('GET', '/metrics')).text()
      return Number(/^nodejs_eventloop_lag_p99_seconds (\S+)$/m.exec(text)?.[1] ?? NaN) * 1000
    }
    // The daemon's GC while the bytes move, from prom-client's nodejs_gc_duration_seconds
    // (cumulative): total seconds, collections, and those over 10 ms (the lag goal's scale).
    const daemonGc = async (): Promise<{ s: number, n: number, over10ms: number }> => {
      const text = await (await metrics.request('GET', '/metrics')).text()
      let s = 0
      let n = 0
      let under = 0
      for (const m of text.matchAll(/^nodejs_gc_duration_seconds_(sum|count|bucket)\{([^}]*)\} (\S+)$/gm)) {
        const v = Number(m[3])
        if (m[1] === 'sum') s += v
        else if (m[1] === 'count') n += v
        else if (/le="0\.01"/.test(m[2] ?? '')) under += v
      }
      return { s, n, over10ms: n - under }
    }
    const gcDeltas: Array<{ s: number, n: number, over10ms: number }> = []
    const lagDaemon: number[] = []
    const lagHere: number[] = []
    for (let rep = 0; rep < 3; rep++) {
      await daemonP99()
      const gc0 = await daemonGc()
      const here = monitorEventLoopDelay({ resolution: 10 })
      here.enable()
      const job = node.submit({ op: 'reduce', inputs: { x }, params: { op: 'sum' }, schedule: { shardsPerPeer: 1 } })
      await job.result()
      here.disable()
      lagHere.push(here.percentile(99) / 1e6)
      lagDaemon.push(await daemonP99())
      const gc1 = await daemonGc()
      gcDeltas.push({ s: gc1.s - gc0.s, n: gc1.n - gc0.n, over10ms: gc1.over10ms - gc0.over10ms })
      const s = job.shards[0]
      if (s?.ms === undefined) throw new Error('no shard timing')
      rates.push((s.bytesOut / 1e6) / ((s.ms - (s.computeMs ?? 0)) / 1000))
      log(`transfer run ${rep}: shard ${s.ms} ms, compute ${s.computeMs ?? 0} ms, ${s.bytesOut} bytes out`)
    }
    const rate = median(rates)
    record({ section: 'transfer', name: '256 MiB tensor over /tensormesh/shard/1.0.0, daemon to daemon (bulk channel: TCP + AES-128-GCM)', value: rate, unit: 'MB/s', baseline: { name: 'raw TCP (node:net) between two processes, bytes discarded', value: raw, unit: 'MB/s' }, ratio: rate / raw, goal: '>= 0.5 of raw TCP' })
    record({ section: 'transfer', name: 'the same, against raw TCP storing into a fresh buffer', value: rate, unit: 'MB/s', baseline: { name: 'raw TCP into a fresh 256 MiB buffer', value: rawStored, unit: 'MB/s' }, ratio: rate / rawStored, goal: '>= 0.8' })
    record({ section: 'transfer', name: 'the same, against raw TCP storing into a reused buffer', value: rate, unit: 'MB/s', baseline: { name: 'raw TCP into a 256 MiB buffer already mapped (its 2nd and 3rd transfers)', value: rawReused, unit: 'MB/s' }, ratio: rate / rawReused, goal: '>= 0.8' })
    const gcNote = gcDeltas.map(g => `${Math.round(g.s * 1000)} ms in ${g.n} collections, ${g.over10ms} over 10 ms`).join('; ')
    record({ section: 'transfer', name: 'p99 event-loop lag of the receiving daemon while the 256 MiB move', value: median(lagDaemon), unit: 'ms', goal: '< 20 ms', note: `the daemon's GC per move: ${gcNote}` })
    record({ section: 'transfer', name: 'p99 event-loop lag of the sending coordinator while the 256 MiB move', value: median(lagHere), unit: 'ms', goal: '< 20 ms' })
  } finally {
    await node.stop()
    daemon.child.kill('SIGTERM')
  }
}

// ---------------------------------------------------------------- trust
/**
 * What the private mesh costs: connection handshakes and a 64 MiB tensor
 * over libp2p streams (the bulk channel off, since pnet sits under libp2p
 * and the bulk channel beside it), between two nodes in this process, with
 * a swarm key (XSalsa20 under noise) and without. Same run, so the ratio holds.
 */
async function trustSection (): Promise<void> {
  const pair = async (swarmKey?: Uint8Array): Promise<[MeshNode, MeshNode]> => {
    const make = async (bootstrap?: string[]): Promise<MeshNode> => {
      const n = new MeshNode({ dataDir: await mkdtemp(join(tmpdir(), 'tm-bench-')), listen: ['/ip4/127.0.0.1/tcp/0'], api: false, journal: false, bulk: false, workers: 1, swarmKey, bootstrap, logger: silentLogger() })
      await n.start()
      return n
    }
    const a = await make()
    const b = await make(a.multiaddrs())
    while (a.directory.size < 1 || b.directory.size < 1) await sleep(20)
    return [a, b]
  }
  const measure = async (label: string, swarmKey?: Uint8Array): Promise<{ handshakeMs: number, mbps: number }> => {
    const [a, b] = await pair(swarmKey)
    try {
      // Handshakes: close every connection, dial again, 12 times; spaced out, because libp2p's
      // connection manager refuses more than 5 inbound connections a second from one host.
      const times: number[] = []
      for (let i = 0; i < 12; i++) {
        await a.libp2p.hangUp(b.peerId)
        await sleep(300)
        const t0 = performance.now()
        await a.libp2p.dial(b.peerId)
        times.push(performance.now() - t0)
      }
      const x = randomTensor([64 * 1024 * 1024 / 4 / 1024, 1024], 5)
      const rates: number[] = []
      for (let rep = 0; rep < 3; rep++) {
        // Each rep as on a fresh pair: once the link is measured, the split rightly keeps most of a
        // transfer-bound reduce on the coordinator, and the remote shard would be too small to time.
        a.jobs.links.forget(b.peerId.toString())
        const job = a.submit({ op: 'reduce', inputs: { x }, params: { op: 'sum' }, schedule: { shardsPerPeer: 1 } })
        await job.result()
        const remote = job.shards.find(s => s.peer === b.peerId.toString())
        if (remote?.ms !== undefined) rates.push((remote.bytesOut / 1e6) / ((remote.ms - (remote.computeMs ?? 0)) / 1000))
      }
      log(`trust ${label}: handshake median ${median(times).toFixed(1)} ms, transfer ${median(rates).toFixed(0)} MB/s`)
      return { handshakeMs: median(times), mbps: median(rates) }
    } finally {
      await Promise.all([a.stop(), b.stop()])
    }
  }
  const open = await measure('open')
  const keyDir = await mkdtemp(join(tmpdir(), 'tm-bench-'))
  await writeSwarmKey(join(keyDir, 'swarm.key'))
  const closed = await measure('private', await readSwarmKey(join(keyDir, 'swarm.key')))
  record({ section: 'trust', name: 'connection handshake (TCP + noise + yamux), private mesh (pnet)', value: closed.handshakeMs, unit: 'ms', baseline: { name: 'open mesh', value: open.handshakeMs, unit: 'ms' }, ratio: closed.handshakeMs / open.handshakeMs })
  record({ section: 'trust', name: '64 MiB tensor over libp2p streams (no bulk channel), private mesh', value: closed.mbps, unit: 'MB/s', baseline: { name: 'open mesh', value: open.mbps, unit: 'MB/s' }, ratio: closed.mbps / open.mbps, note: 'the bulk channel (4 MiB and more, by default) is beside libp2p and unaffected' })
}

// ---------------------------------------------------------------- convergence and detection
async function convergenceSection (): Promise<void> {
  const interval = 2000
  const net = await Testnet.start(8, ['--workers', '1'])
  record({ section: 'convergence', name: 'an 8-node testnet formed (start to every node seeing 7 peers)', value: net.formedMs, unit: 'ms' })
  try {
    const first = await Testnet.start(4, ['--workers', '1']).then(async t => { const ms = t.formedMs; await t.stop(); return ms })
    record({ section: 'convergence', name: 'a 4-node testnet formed', value: first, unit: 'ms', goal: '< 30 s' })
    const info = await new ApiClient(net.node(0).api, net.token).node()
    record({ section: 'convergence', name: 'capacity advert size', value: info.adverts.lastAdvertBytes, unit: 'bytes', goal: 'well under 1 KiB' })
    const t0 = performance.now()
    const extra = await startCli(['start', '--json', '--listen', '/ip4/127.0.0.1/tcp/0', '--api', '127.0.0.1:0', '--workers', '1', '--data-dir', await mkdtemp(join(tmpdir(), 'tm-bench-')), '--log-level', 'warn', '--bootstrap', net.node(0).multiaddrs[0] ?? '', '--swarm-key', net.swarmKey])
    const ready = performance.now()
    const newcomer = (JSON.parse(extra.line) as { peerId: string }).peerId
    const seen = await untilAll(net, (peers) => peers.some(p => p.peerId === newcomer))
    record({ section: 'convergence', name: 'newcomer in every directory of an 8-node testnet (from its ready line)', value: seen - ready, unit: 'ms', baseline: { name: 'advert interval', value: interval, unit: 'ms' }, ratio: (seen - ready) / interval, note: `process start to ready took ${Math.round(ready - t0)} ms` })
    const pid = extra.child.pid ?? 0
    const killed = performance.now()
    process.kill(pid, 'SIGKILL')
    const gone = await untilAll(net, (peers) => !peers.some(p => p.peerId === newcomer))
    record({ section: 'detection', name: 'SIGKILLed peer removed from every directory (8 nodes)', value: gone - killed, unit: 'ms', baseline: { name: 'expiry, three advert intervals', value: 3 * interval, unit: 'ms' }, ratio: (gone - killed) / (3 * interval) })
  } finally {
    await net.stop()
  }
}

async function untilAll (net: Testnet, ok: (peers: PeerView[]) => boolean): Promise<number> {
  const pending = new Set(net.nodes.map(n => n.api))
  while (pending.size > 0) {
    for (const api of [...pending]) if (ok(await new ApiClient(api, net.token).peers())) pending.delete(api)
    if (pending.size > 0) await sleep(20)
  }
  return performance.now()
}

// ---------------------------------------------------------------- scaling
/**
 * Honest scaling: every node in a network namespace of its own and pinned
 * to a core of its own (`testnet --netns --cpus`), so "2 nodes" means two
 * cores' worth of compute and a real link between them, not two processes
 * fighting over the same cores on loopback. Needs root; this machine has 2
 * cores, so 2 nodes is as far as it goes.
 */
async function scalingSection (): Promise<void> {
  if (process.getuid?.() !== 0) {
    record({ section: 'scaling', name: 'skipped', value: NaN, unit: '', note: 'testnet --netns needs root' })
    return
  }
  const a = randomTensor([4096, 4096], 21)
  const b = randomTensor([4096, 2048], 22)
  const job = 'matmul 4096x4096 @ 4096x2048'
  /** Median coordinator time of the job on a fresh testnet, over 3 runs after one warm-up job (kernels compiled, b cached by CID, links measured). */
  const measure = async (api: string): Promise<{ ms: number, last: JobView }> => {
    await runJob(api, 'matmul', { a, b })
    const samples: number[] = []
    let last: JobView | undefined
    for (let rep = 0; rep < 3; rep++) {
      last = await runJob(api, 'matmul', { a, b })
      samples.push(jobMs(last))
    }
    await checkSampledRows(api, last?.id ?? '', a, b)
    return { ms: median(samples), last: last as JobView }
  }
  const timed = async (nodes: number, extra: string[]): Promise<{ ms: number, last: JobView, net: Testnet }> => {
    const net = await Testnet.start(nodes, ['--netns', '--cpus', '--workers', '1', ...extra])
    return { ...await measure(net.node(0).api), net }
  }
  const rowsOn = (j: JobView, peer: string): number => j.shards.filter(s => s.peer === peer).reduce((n, s) => n + s.end - s.start, 0)
  const bytesBy = (j: JobView, via: 'direct' | 'relay'): number => j.shards.filter(s => s.via === via).reduce((n, s) => n + s.bytesIn + s.bytesOut, 0)

  const one = await timed(1, [])
  await one.net.stop()
  record({ section: 'scaling', name: `${job}, 1 node (one core, netns)`, value: one.ms, unit: 'ms' })
  const two = await timed(2, [])
  await two.net.stop()
  record({ section: 'scaling', name: `${job}, 2 nodes (one core each, netns)`, value: two.ms, unit: 'ms', baseline: { name: '1 node', value: one.ms, unit: 'ms' }, ratio: one.ms / two.ms, goal: 'speedup >= 1.7 (exo: 1.8 on 2 devices)', note: `ratio = speedup; rows on the peer: ${rowsOn(two.last, two.net.node(1).peerId)} of 4096` })
  for (const rate of ['1gbit', '100mbit']) {
    const limited = await timed(2, ['--bandwidth', rate])
    await limited.net.stop()
    record({ section: 'scaling', name: `${job}, 2 nodes, links shaped to ${rate}`, value: limited.ms, unit: 'ms', baseline: { name: '2 nodes, unshaped veth', value: two.ms, unit: 'ms' }, ratio: two.ms / limited.ms, note: `ratio = unshaped time / shaped time; rows on the peer: ${rowsOn(limited.last, limited.net.node(1).peerId)} of 4096 (the split counts the measured link); vs 1 node: ${round(one.ms / limited.ms)}x` })
  }
  // Node 1 behind a NAT router: the job from the reachable node, then from the NATed one.
  const t0 = performance.now()
  const natNet = await Testnet.start(2, ['--netns', '--cpus', '--workers', '1', '--nat', '1'])
  const formed = performance.now() - t0
  try {
    const natApi = new ApiClient(natNet.node(1).api)
    const relayAt = await untilTrue(async () => (await natApi.json<{ reachability: string }>('GET', '/v1/node')).reachability === 'private')
    record({ section: 'scaling', name: '2-node testnet with node 1 behind NAT formed (start to both directories full)', value: formed, unit: 'ms', note: `the NATed node knew it was private ${Math.round(relayAt - t0)} ms after start` })
    for (const [label, at] of [['a job from the reachable node to a NATed peer', 0], ['a job submitted to the NATed node', 1]] as const) {
      const { ms, last } = await measure(natNet.node(at).api)
      const other = natNet.node(1 - at).peerId
      record({ section: 'scaling', name: `${job}, 2 nodes, ${label}`, value: ms, unit: 'ms', baseline: { name: '2 nodes, no NAT', value: two.ms, unit: 'ms' }, ratio: two.ms / ms, note: `rows on the other node: ${rowsOn(last, other)}; bytes direct ${bytesBy(last, 'direct')}, through a relay ${bytesBy(last, 'relay')}` })
    }
  } finally {
    await natNet.stop()
  }
  // Both workers behind NAT: the NATed coordinator reaches the other NATed node only through the relay.
  const relayNet = await Testnet.start(3, ['--netns', '--cpus', '--workers', '1', '--nat', '1', '--nat', '2'])
  try {
    const { ms, last } = await measure(relayNet.node(1).api)
    record({ section: 'scaling', name: `${job}, 3 nodes, submitted to a NATed node whose one peer is NATed too`, value: ms, unit: 'ms', note: `bytes direct ${bytesBy(last, 'direct')}, through a relay ${bytesBy(last, 'relay')}; rows on the other NATed node: ${rowsOn(last, relayNet.node(2).peerId)} (3 nodes share 2 cores here)` })
  } finally {
    await relayNet.stop()
  }
}

/** Polls `check` every 100 ms until it holds (60 s at most); returns when. */
async function untilTrue (check: () => Promise<boolean>): Promise<number> {
  const deadline = performance.now() + 60_000
  while (performance.now() < deadline) {
    if (await check().catch(() => false)) return performance.now()
    await sleep(100)
  }
  throw new Error('condition not met within 60 s')
}

// ---------------------------------------------------------------- faults
async function faultsSection (): Promise<void> {
  const rows = Number(values['fault-rows'] ?? 12288)
  const a = randomTensor([rows, 4096], 10)
  const b = randomTensor([4096, 4096], 11)
  const net = await Testnet.start(3, ['--workers', '1'])
  let clean = NaN
  try {
    const first = await runJob(net.node(0).api, 'matmul', { a, b })
    await checkSampledRows(net.node(0).api, first.id, a, b)
    clean = jobMs(first)
    record({ section: 'faults', name: `matmul ${rows}x4096x4096 on a 3-node testnet, no fault`, value: clean, unit: 'ms', goal: '>= 10 s job' })
    const victim = net.node(2)
    let killedAt = 0
    const job = await runJob(net.node(0).api, 'matmul', { a, b }, {}, {}, (j) => {
      if (killedAt === 0 && j.progress.done >= Math.floor(j.progress.total / 3) && j.shards.some(s => s.state === 'running' && s.history.at(-1)?.peer === victim.peerId)) {
        killedAt = Date.now()
        process.kill(victim.pid, 'SIGKILL')
      }
    })
    await checkSampledRows(net.node(0).api, job.id, a, b)
    const killedMs = jobMs(job)
    record({ section: 'faults', name: 'same job, one of three workers SIGKILLed a third of the way in', value: killedMs, unit: 'ms', baseline: { name: 'no fault', value: clean, unit: 'ms' }, ratio: killedMs / clean, goal: '< 1.3x' })
    const restarts = job.shards.flatMap(s => s.history.some(h => h.peer === victim.peerId) ? s.history.filter(h => h.peer !== victim.peerId && h.startedAt >= killedAt).map(h => h.startedAt - killedAt) : [])
    if (restarts.length > 0) record({ section: 'faults', name: 'SIGKILL to the dead peer\'s shard restarting elsewhere', value: Math.min(...restarts), unit: 'ms', goal: '< 3 s' })
  } finally {
    await net.stop()
  }
  const slowNet = await Testnet.start(3, ['--workers', '1', '--inject', '2:slow=5'])
  try {
    const without = jobMs(await runJob(slowNet.node(0).api, 'matmul', { a, b }, {}, { schedule: { backups: false } }))
    const withBackups = jobMs(await runJob(slowNet.node(0).api, 'matmul', { a, b }))
    record({ section: 'faults', name: 'one worker slowed 5x, no backup copies', value: without, unit: 'ms', baseline: { name: 'no fault', value: clean, unit: 'ms' }, ratio: without / clean })
    record({ section: 'faults', name: 'one worker slowed 5x, with backup copies', value: withBackups, unit: 'ms', baseline: { name: 'no backup copies', value: without, unit: 'ms' }, ratio: withBackups / without, note: 'ratio < 1: backups help' })
  } finally {
    await slowNet.stop()
  }
}

/**
 * The fault runs' products are too large to check whole against numpy in a
 * benchmark; 16 seeded rows are checked against float64 dot products
 * (relative error 1e-4 of the row's largest value), and a wrong row fails
 * the section.
 */
async function checkSampledRows (api: string, id: string, a: HostTensor, b: HostTensor): Promise<void> {
  const res = await new ApiClient(api).request('GET', `/v1/jobs/${id}/result`)
  const out = decodeNpy(new Uint8Array(await res.arrayBuffer()), 'result')
  const [m, k] = a.shape as [number, number]
  const n = b.shape[1] ?? 0
  const pick = prng(99)
  for (let s = 0; s < 16; s++) {
    const row = Math.floor(pick() * m)
    const ref = new Float64Array(n)
    for (let j = 0; j < k; j++) {
      const av = a.data[row * k + j] ?? 0
      for (let c = 0; c < n; c++) ref[c] = (ref[c] ?? 0) + av * (b.data[j * n + c] ?? 0)
    }
    let scale = 0
    let diff = 0
    for (let c = 0; c < n; c++) {
      scale = Math.max(scale, Math.abs(ref[c] ?? 0))
      diff = Math.max(diff, Math.abs((out.data[row * n + c] ?? 0) - (ref[c] ?? 0)))
    }
    if (diff > 1e-4 * scale) throw new Error(`job ${id}: row ${row} is wrong (max error ${diff} against ${scale})`)
  }
  log(`job ${id}: 16 sampled rows equal float64 references within 1e-4`)
}

// ---------------------------------------------------------------- images
/**
 * MobileNetV2 (nsfwjs, via examples:models) on the five example photos,
 * repeated to IMAGES_PER_JOB: files in, decoded, resized and classified on
 * the peers. Baseline: the same task (decode, resize, predict, batch 8) in
 * one executor worker of this process. With root, nodes sit in namespaces
 * pinned to a core each (--netns --cpus), as the issue's 2-vs-1 figure asks.
 */
const IMAGES_PER_JOB = 40
async function imagesSection (): Promise<void> {
  const work = await mkdtemp(join(tmpdir(), 'tm-bench-images-'))
  await writeExampleModels(join(work, 'models'))
  await writeExamplePhotos(join(work, 'images'))
  const model = packModel(await readModelDir(join(work, 'models', 'mobilenet-v2', 'model.json')))
  const files = await Promise.all(EXAMPLE_PHOTOS.map(async n => ({ name: `${n}.jpg`, bytes: new Uint8Array(await readFile(join(work, 'images', `${n}.jpg`))) })))
  const list = Array.from({ length: IMAGES_PER_JOB }, (_, i) => ({ ...files[i % files.length] as { name: string, bytes: Uint8Array }, name: `${i}-${files[i % files.length]?.name ?? ''}` }))
  const params = { images: { size: [224, 224], scale: 255 }, batchSize: 8 }

  const pool = new ExecutorPool({ backend: 'auto', workers: 1, calibrate: false })
  await pool.start()
  const local: number[] = []
  try {
    const task = { op: 'infer', params: { ...params, inputShape: [224, 224, 3], outputShape: [5] }, inputs: {}, blobs: { model, images: packImages(list) } }
    await pool.run(task)
    for (let rep = 0; rep < 3; rep++) {
      const t0 = performance.now()
      await pool.run(task)
      local.push(IMAGES_PER_JOB / ((performance.now() - t0) / 1000))
    }
  } finally {
    await pool.stop()
  }
  const inProcess = median(local)
  record({ section: 'images', name: `MobileNetV2 on ${IMAGES_PER_JOB} JPEGs (decode, resize, predict; batch 8), one worker in one process`, value: inProcess, unit: 'images/s' })

  const root = process.getuid?.() === 0
  const flags = root ? ['--netns', '--cpus', '--workers', '1'] : ['--workers', '1']
  const where = root ? 'one core each, netns' : 'loopback, cores shared'
  const rate = async (nodes: number): Promise<number> => {
    const net = await Testnet.start(nodes, flags)
    try {
      const api = net.node(0).api
      const once = async (): Promise<JobView> => {
        const form = new FormData()
        form.set('spec', JSON.stringify({ op: 'infer', params }))
        form.set('blob.model', new Blob([model as Uint8Array<ArrayBuffer>]), 'model.tmmodel')
        for (const f of list) form.append('image', new Blob([f.bytes as Uint8Array<ArrayBuffer>]), f.name)
        const client = new ApiClient(api)
        const submitted = await (await client.request('POST', '/v1/jobs', form)).json() as JobView
        const job = await new RemoteJob(client, submitted.id).wait()
        if (job.state !== 'succeeded') throw new Error(`job ${job.id} ${job.state}: ${job.error?.message ?? ''}`)
        return job
      }
      await once()
      const rates: number[] = []
      for (let rep = 0; rep < 3; rep++) rates.push(IMAGES_PER_JOB / (jobMs(await once()) / 1000))
      return median(rates)
    } finally {
      await net.stop()
    }
  }
  const one = await rate(1)
  record({ section: 'images', name: `the same job, 1 node (${where})`, value: one, unit: 'images/s', baseline: { name: 'one worker in one process', value: inProcess, unit: 'images/s' }, ratio: one / inProcess, goal: '>= 0.8' })
  const two = await rate(2)
  record({ section: 'images', name: `the same job, 2 nodes (${where})`, value: two, unit: 'images/s', baseline: { name: '1 node', value: one, unit: 'images/s' }, ratio: two / one, goal: root ? '>= 1.7' : undefined, note: root ? 'ratio = speedup' : 'ratio = speedup; two nodes and their workers share the 2 cores with this process: run as root for the pinned figure' })
}

// ---------------------------------------------------------------- train
/** Rows of the train section's data: 60 steps of 64. */
const TRAIN_ROWS = 3840
const TRAIN_BATCH = 64

/**
 * Training throughput: the example MNIST CNN (examples/mnist-cnn/model.json)
 * on seeded data of MNIST's shape (speed does not depend on the values),
 * one epoch of TRAIN_ROWS rows at batch 64. Baseline: TF.js model.fit of
 * the same model and batch in this process, on wasm. Then a train job on a
 * 1-node and a 2-node testnet (one core per node with --netns --cpus as
 * root), in step and in local mode; each figure is the epoch's time of the
 * second of two jobs (the first carries the data's transfer and kernel set-up).
 */
async function trainSection (): Promise<void> {
  const topology = JSON.parse(await readFile(new URL('../examples/mnist-cnn/model.json', import.meta.url), 'utf8')) as { modelTopology: Record<string, unknown> }
  const u = prng(41)
  const x = { dtype: 'float32' as const, shape: [TRAIN_ROWS, 28, 28, 1], data: Float32Array.from({ length: TRAIN_ROWS * 784 }, () => u()) }
  const y = { dtype: 'int32' as const, shape: [TRAIN_ROWS], data: Int32Array.from({ length: TRAIN_ROWS }, () => Math.floor(u() * 10)) }
  const xt = { ...x, shape: [256, 28, 28, 1], data: x.data.slice(0, 256 * 784) }
  const yt = { ...y, shape: [256], data: y.data.slice(0, 256) }

  const { loadBackend } = await import('../src/compute/backend.ts')
  const { tf } = await loadBackend('wasm')
  await import('@tensorflow/tfjs')
  const layers = await import('@tensorflow/tfjs-layers')
  const model = await layers.loadLayersModel(tf.io.fromMemory({ modelTopology: topology.modelTopology }))
  model.compile({ optimizer: tf.train.adam(0.001), loss: 'sparseCategoricalCrossentropy' })
  const xs = tf.tensor(x.data, x.shape, 'float32')
  const ys = tf.tensor(y.data, y.shape, 'float32')
  await model.fit(xs.slice(0, 640), ys.slice(0, 640), { batchSize: TRAIN_BATCH, epochs: 1, verbose: 0 })
  const fits: number[] = []
  for (let rep = 0; rep < 2; rep++) {
    const t0 = performance.now()
    await model.fit(xs, ys, { batchSize: TRAIN_BATCH, epochs: 1, verbose: 0 })
    fits.push(TRAIN_ROWS / ((performance.now() - t0) / 1000))
  }
  model.dispose()
  xs.dispose()
  ys.dispose()
  const fit = median(fits)
  record({ section: 'train', name: `MNIST CNN (${TRAIN_ROWS} rows, batch ${TRAIN_BATCH}): TF.js model.fit in one process (wasm)`, value: fit, unit: 'samples/s' })

  const root = process.getuid?.() === 0
  const flags = root ? ['--netns', '--cpus', '--workers', '1'] : ['--workers', '1']
  const where = root ? 'one core each, netns' : 'loopback, cores shared'
  const form = (sync: Record<string, unknown>): FormData => {
    const f = new FormData()
    f.set('spec', JSON.stringify({ op: 'train', params: { loss: 'sparseCategoricalCrossentropy', optimizer: { name: 'adam', learningRate: 0.001 }, batchSize: TRAIN_BATCH, epochs: 1, seed: 1, sync } }))
    f.set('blob.model', new Blob([packModel({ modelTopology: topology.modelTopology, weightSpecs: [], weightData: new ArrayBuffer(0), format: 'layers-model' }) as Uint8Array<ArrayBuffer>]), 'model.tmmodel')
    for (const [name, t] of [['x', x], ['y', y], ['xTest', xt], ['yTest', yt]] as const) f.set(name, new Blob([encodeNpy(t) as Uint8Array<ArrayBuffer>]), `${name}.npy`)
    return f
  }
  const rate = async (nodes: number, sync: Record<string, unknown>): Promise<{ rate: number, wire: number, perRound: number }> => {
    const net = await Testnet.start(nodes, flags)
    try {
      const client = new ApiClient(net.node(0).api)
      let last: JobView | undefined
      for (let rep = 0; rep < 2; rep++) {
        const submitted = await (await client.request('POST', '/v1/jobs', form(sync))).json() as JobView
        last = await new RemoteJob(client, submitted.id).wait()
        if (last.state !== 'succeeded') throw new Error(`train job ${last.id} ${last.state}: ${last.error?.message ?? ''}`)
      }
      const epoch = last?.metrics?.rounds[0]
      const wire = last?.metrics?.wireBytes ?? 0
      return { rate: TRAIN_ROWS / ((epoch?.ms ?? NaN) / 1000), wire, perRound: wire / Math.max(1, last?.metrics?.progress?.total ?? 1) }
    } finally {
      await net.stop()
    }
  }
  const step = { mode: 'step' }
  const local = { mode: 'local', steps: 30, replicas: 2 }
  const one = await rate(1, step)
  record({ section: 'train', name: `the same epoch as a train job, step mode, 1 node (${where})`, value: one.rate, unit: 'samples/s', baseline: { name: 'model.fit in one process', value: fit, unit: 'samples/s' }, ratio: one.rate / fit, goal: '>= 0.8', note: 'the epoch\'s time, held-out evaluation of 256 rows included' })
  const two = await rate(2, step)
  record({ section: 'train', name: `step mode, 2 nodes (${where})`, value: two.rate, unit: 'samples/s', baseline: { name: '1 node', value: one.rate, unit: 'samples/s' }, ratio: two.rate / one.rate, goal: root ? '>= 1.6' : undefined, note: `ratio = speedup; ${Math.round(two.wire / 1e6)} MB on the wire${root ? '' : '; both nodes share 2 cores with this process: run as root for the pinned figure'}` })
  const oneLocal = await rate(1, local)
  const twoLocal = await rate(2, local)
  record({ section: 'train', name: `local mode (H=30, 2 replicas), 2 nodes (${where})`, value: twoLocal.rate, unit: 'samples/s', baseline: { name: 'local mode, 1 node', value: oneLocal.rate, unit: 'samples/s' }, ratio: twoLocal.rate / oneLocal.rate, goal: root ? '>= 1.6' : undefined, note: `ratio = speedup; ${round(twoLocal.wire / 1e6)} MB on the wire, ${round(two.wire / Math.max(1, twoLocal.wire))}x fewer than step mode` })
  record({ section: 'train', name: 'bytes on the wire, local mode (H=30) vs step mode, 2 nodes, one epoch', value: twoLocal.wire, unit: 'B', baseline: { name: 'step mode', value: two.wire, unit: 'B' }, ratio: two.wire / Math.max(1, twoLocal.wire), goal: '>= 10x fewer', note: 'ratio = step bytes / local bytes' })
  // The coordinator's bytes per round as the group grows: the star's grow with it, the butterfly's stay near one vector each way.
  const butterfly = { ...local, averaging: 'butterfly' }
  const star3 = await rate(3, { ...local, replicas: 3 })
  const fly2 = await rate(2, butterfly)
  const fly3 = await rate(3, { ...butterfly, replicas: 3 })
  record({ section: 'train', name: 'coordinator bytes per round, star, 3 nodes', value: star3.perRound, unit: 'B', baseline: { name: '2 nodes', value: twoLocal.perRound, unit: 'B' }, ratio: star3.perRound / Math.max(1, twoLocal.perRound), note: 'ratio = 3 nodes / 2 nodes: a star grows with the peers (k - 1 vectors each way)' })
  record({ section: 'train', name: 'coordinator bytes per round, butterfly, 3 nodes', value: fly3.perRound, unit: 'B', baseline: { name: '2 nodes', value: fly2.perRound, unit: 'B' }, ratio: fly3.perRound / Math.max(1, fly2.perRound), goal: 'equal within 10% (coordinator outside the group); (k - 1)/k of a vector each way with it inside', note: `ratio = 3 nodes / 2 nodes; the coordinator is a member, so its own part stays home: 1/2 then 2/3 of a vector each way, bounded by 1; samples/s butterfly ${round(fly2.rate)} vs star ${round(twoLocal.rate)} on 2 nodes` })
}

/** Hundreds of real nodes in this process (scripts/bench/scale.ts); records into bench/scale.json for the report and the simulator. */
async function scaleSection (): Promise<void> {
  const sizes = (values['scale-sizes'] ?? '25,50,100,200').split(',').map(Number)
  const records = await benchScale(sizes, log)
  await saveScaleRecords(records, new URL('../bench/scale.json', import.meta.url))
  await writeScaleCalibration(records, new URL('../bench/scale-calibration.json', import.meta.url))
  for (const r of records) {
    record({ section: 'scale', name: `${r.n} nodes (${r.regime} regime): control bytes in per node`, value: r.controlBytesPerNodePerSec, unit: 'B/s', goal: '<= 2 KB/s at 10,000 (simulated)', note: `advert interval ${BENCH_ADVERT_INTERVAL_MS / 1000} s in this bench; ${r.advertsHeardPerNodePerSec} adverts/s heard per node` })
    record({ section: 'scale', name: `${r.n} nodes: connections per node outside jobs (max ${r.connectionsMax})`, value: r.connectionsPerNode, unit: 'peers', goal: '<= 64' })
    record({ section: 'scale', name: `${r.n} nodes: bid requests for a job of ${r.shardsPerJob} shards`, value: r.bidsPerJob, unit: 'requests', goal: '<= 4 x S, not growing with N' })
    record({ section: 'scale', name: `${r.n} nodes: makespan of a ${r.shardsPerJob}-shard job`, value: r.makespanMs, unit: 'ms', baseline: { name: 'ideal: work / capacity of the peers that accepted', value: r.idealMs, unit: 'ms' }, ratio: r.makespanRatio, goal: '<= 1.2x' })
    record({ section: 'scale', name: `${r.n} nodes: a newcomer usable (it and 3 others know each other)`, value: r.newcomerUsableMs, unit: 'ms' })
  }
}

const run: Record<string, () => Promise<void>> = {
  scale: scaleSection,
  compute: computeSection, pool: poolSection, mesh: meshSection, overhead: overheadSection, transfer: transferSection, trust: trustSection, convergence: convergenceSection, faults: faultsSection, scaling: scalingSection, images: imagesSection, train: trainSection
}
for (const s of sections) {
  const f = run[s]
  if (f === undefined) throw new Error(`unknown section ${s}; sections: ${Object.keys(run).join(', ')}`)
  log(`section ${s}`)
  const t0 = performance.now()
  try {
    await f()
  } catch (err) {
    log(`section ${s} failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}`)
    figures.push({ section: s, name: 'section failed', value: NaN, unit: '', note: err instanceof Error ? err.message : String(err) })
  }
  log(`section ${s} took ${Math.round((performance.now() - t0) / 1000)} s`)
}

const machine = `${cpus()[0]?.model ?? 'unknown CPU'}, ${availableParallelism()} cores, ${Math.round(totalmem() / 2 ** 30)} GiB, Node ${process.version}`
const result = { date: new Date(started).toISOString(), machine, seconds: Math.round((Date.now() - started) / 1000), sections, figures }
await mkdir(new URL('../bench/', import.meta.url), { recursive: true })
// Only a run of every section replaces the committed results; --only writes beside them.
const stem = values.only === undefined ? 'results' : 'results.partial'
await writeFile(new URL(`../bench/${stem}.json`, import.meta.url), JSON.stringify(result, null, 2) + '\n')
const fmt = (v: number): string => Number.isFinite(v) ? String(round(v)) : '-'
const md = [
  '# tensormesh benchmark results',
  '',
  `- date: ${result.date}`,
  `- machine: ${machine}`,
  `- command: \`npm run bench${values.only !== undefined ? ` -- --only ${values.only}` : ''}\` (${result.seconds} s)`,
  '- each figure is the median of several runs unless noted; baselines were measured in the same run',
  '',
  '| section | figure | value | baseline | ratio | goal | note |',
  '|---|---|---|---|---|---|---|',
  ...figures.map(f => `| ${f.section} | ${f.name} | ${fmt(f.value)} ${f.unit} | ${f.baseline !== undefined ? `${f.baseline.name}: ${fmt(f.baseline.value)} ${f.baseline.unit}` : ''} | ${f.ratio !== undefined ? fmt(f.ratio) : ''} | ${f.goal ?? ''} | ${f.note ?? ''} |`),
  ''
].join('\n')
await writeFile(new URL(`../bench/${stem}.md`, import.meta.url), md)
log(`wrote bench/${stem}.json and bench/${stem}.md in ${result.seconds} s`)
process.exit(0)

