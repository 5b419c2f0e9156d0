/**
 * The simulator's model of the network, the machines and the wire: every
 * number here is a parameter, written down once, and printed in the report.
 */
import { existsSync, readFileSync } from 'node:fs'
import { DEFAULT_ADVERT_INTERVAL_MS } from '../../src/protocol/capacity/index.ts'
import { GOSSIP_D, GOSSIP_D_HI, GOSSIP_D_LAZY, GOSSIP_D_LO, GOSSIP_FACTOR, SAMPLE_WINDOW_MS } from '../../src/protocol/capacity/sampling.ts'
import { CONNECTION_PING_INTERVAL_MS } from '../../src/node/mesh-node.ts'
import { BENCH_ADVERT_INTERVAL_MS, UNIT_MS } from '../bench/scale.ts'

/**
 * Bytes on the wire per message kind, and gossipsub's fan-out. The real
 * bench writes bench/scale-calibration.json with what it measured; any field
 * there replaces the default.
 */
export interface Calibration {
  /**
   * One advert as gossipsub sends it: the encoded advert (~200-300 B: id,
   * seq, capacity, operators, addresses) plus the RPC's signature (64),
   * author key and id (~80), seqno, topic and framing, plus noise/yamux.
   */
  advertWireBytes: number
  /** Copies of each advert a node receives: gossipsub forwards along its mesh (D = 6), less the link it came on, plus duplicates. */
  copiesPerAdvert: number
  /** Per open connection: libp2p's connection-monitor ping (every 10 s), yamux window updates, identify pushes. */
  baselineBytesPerConnPerSec: number
  /** A message id in an IHAVE (js-gossipsub: author id + seqno, ~50 B with framing). */
  ihaveBytesPerId: number
  /** Gossipsub D_lazy: the least number of non-mesh peers gossiped to per heartbeat (gossipFactor 0.25 of the rest if more). */
  ihavePeers: number
  /** Heartbeats whose message ids go in each IHAVE (mcacheGossip). */
  ihaveHeartbeats: number
  heartbeatMs: number
  /** A hello: one advert each way plus the stream's multistream-select and yamux framing. */
  helloOverheadBytes: number
  /** A call for bids and its answer, with the stream's negotiation (both directions). */
  bidExchangeBytes: number
}

export const DEFAULT_CALIBRATION: Calibration = {
  advertWireBytes: 330,
  copiesPerAdvert: GOSSIP_D,
  baselineBytesPerConnPerSec: 10,
  ihaveBytesPerId: 50,
  ihavePeers: GOSSIP_D_LAZY,
  ihaveHeartbeats: 3,
  heartbeatMs: 1000,
  helloOverheadBytes: 120,
  bidExchangeBytes: 400
}

export const CALIBRATION_FILE = new URL('../../bench/scale-calibration.json', import.meta.url)

/** The defaults, with whatever numeric fields bench/scale-calibration.json sets. */
export function loadCalibration (file: URL = CALIBRATION_FILE): { calibration: Calibration, source: string } {
  const out: Calibration = { ...DEFAULT_CALIBRATION }
  if (!existsSync(file)) return { calibration: out, source: 'defaults' }
  const raw = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>
  const set: string[] = []
  for (const key of Object.keys(out) as Array<keyof Calibration>) {
    const v = raw[key]
    if (typeof v === 'number' && Number.isFinite(v) && v >= 0) { out[key] = v; set.push(key) }
  }
  return { calibration: out, source: set.length > 0 ? `bench/scale-calibration.json (${set.join(', ')})` : 'defaults' }
}

export interface BandwidthClass {
  share: number
  bitsPerSecond: number
}

export interface ModelParams {
  /** One-way latency per pair of nodes: lognormal, drawn once per pair. */
  latencyMedianMs: number
  latencySigma: number
  latencyCapMs: number
  /** Each node's access link, the same up and down. */
  bandwidth: BandwidthClass[]
  /** Advertised whole-node GFLOPS (all slots at once, as the pool calibrates): lognormal, clipped. */
  gflopsMedian: number
  gflopsSigma: number
  gflopsMin: number
  gflopsMax: number
  slotChoices: number[]
  /** A node's real speed over its advertised one: lognormal (calibration is a short benchmark). */
  speedNoiseSigma: number
  /** Each task's time over its expected one: lognormal. */
  taskJitterSigma: number
  /** Share of the nodes that leave per minute (and as many join), Poisson. */
  churnPerMinute: number
  /** Share of leaves that are a crashed process (the host resets its sockets: peers notice after one link latency). */
  crashShare: number
  /** The other leaves are a host gone: peers notice when libp2p's connection monitor misses a ping (every 10 s, then its timeout). */
  hostGoneDetectMs: [number, number]
  /** A dial to a host that is gone fails after MeshNode.dialQuietly's timeout (two advert intervals). */
  dialTimeoutMs: number
  /** Round trips to open a connection (TCP, noise XX, yamux, multistream-select). */
  dialRtts: number
  /** The job: units (one per shard), work and bytes per unit. */
  units: number
  shardsPerPeer: number
  unitGflop: number
  bytesInPerUnit: number
  bytesOutPerUnit: number
  advertIntervalMs: number
  /** Gossipsub mesh degree bounds. */
  meshD: number
  meshDlo: number
  meshDhi: number
  /** A node's speed pattern instead of the lognormal (the real bench's ModelPool: 0.5, 1, 1, 2 x the median). */
  speedPattern?: number[]
}

export const INTERNET_MODEL: ModelParams = {
  latencyMedianMs: 20,
  latencySigma: 0.6,
  latencyCapMs: 500,
  bandwidth: [{ share: 0.3, bitsPerSecond: 10e6 }, { share: 0.5, bitsPerSecond: 100e6 }, { share: 0.2, bitsPerSecond: 1e9 }],
  gflopsMedian: 20,
  gflopsSigma: 0.8,
  gflopsMin: 2,
  gflopsMax: 500,
  slotChoices: [1, 2, 4, 8],
  speedNoiseSigma: 0.2,
  taskJitterSigma: 0.1,
  churnPerMinute: 0.05,
  crashShare: 0.5,
  // libp2p's connection monitor pings each quiet connection every CONNECTION_PING_INTERVAL_MS.
  hostGoneDetectMs: [CONNECTION_PING_INTERVAL_MS, 2 * CONNECTION_PING_INTERVAL_MS],
  dialTimeoutMs: 4_000,
  dialRtts: 3,
  units: 1000,
  shardsPerPeer: 1000,
  unitGflop: 20,
  bytesInPerUnit: 4096,
  bytesOutPerUnit: 4096,
  advertIntervalMs: DEFAULT_ADVERT_INTERVAL_MS,
  meshD: GOSSIP_D,
  meshDlo: GOSSIP_D_LO,
  meshDhi: GOSSIP_D_HI
}

/**
 * The real bench's setting (scripts/bench/scale.ts): one process on
 * loopback, every node 2 slots at 0.5/1/1/2 x one speed, no churn; the
 * same job (1,000 rows of 4 KiB, one per shard).
 */
export const LOOPBACK_MODEL: ModelParams = {
  ...INTERNET_MODEL,
  latencyMedianMs: 0.2,
  latencySigma: 0.3,
  latencyCapMs: 5,
  bandwidth: [{ share: 1, bitsPerSecond: 8e9 }],
  slotChoices: [2],
  speedNoiseSigma: 0,
  taskJitterSigma: 0.05,
  churnPerMinute: 0,
  speedPattern: [0.5, 1, 1, 2],
  // ModelPool's UNIT_MS on one slot of a speed-1 node (20 GFLOPS over 2 slots: 10 GFLOP a second).
  unitGflop: UNIT_MS / 1000 * 10,
  advertIntervalMs: BENCH_ADVERT_INTERVAL_MS
}

/** Warm-up before anything is measured: two sample windows, so directories and estimates are in steady state. */
export const DEFAULT_WARMUP_MS = 2 * SAMPLE_WINDOW_MS

/** Plain-text lines describing the model, for the report and the script's output. */
export function describeModel (m: ModelParams, c: Calibration): string[] {
  const bw = m.bandwidth.map(b => `${Math.round(b.share * 100)}% ${b.bitsPerSecond >= 1e9 ? `${b.bitsPerSecond / 1e9} Gbit/s` : `${b.bitsPerSecond / 1e6} Mbit/s`}`).join(', ')
  return [
    `one-way latency per pair: lognormal, median ${m.latencyMedianMs} ms, sigma ${m.latencySigma}, capped at ${m.latencyCapMs} ms (drawn once per pair from a hash of the two nodes)`,
    `bandwidth per node (up = down): ${bw}; a transfer takes bytes / min(both ends) + latency, each end's link serialising its transfers`,
    `GFLOPS per node (whole node, as advertised): ${m.speedPattern !== undefined ? `${m.gflopsMedian} x ${m.speedPattern.join(', ')} in turn (the real bench's ModelPool speeds)` : `lognormal, median ${m.gflopsMedian}, sigma ${m.gflopsSigma}, clipped to [${m.gflopsMin}, ${m.gflopsMax}]`}; real speed = advertised x lognormal(sigma ${m.speedNoiseSigma}); each task x lognormal(sigma ${m.taskJitterSigma}); slots ${m.slotChoices.length > 1 ? `uniform over {${m.slotChoices.join(', ')}}, drawn independently of GFLOPS` : String(m.slotChoices[0] ?? 1)}, each slot runs at GFLOPS / slots`,
    m.churnPerMinute > 0
      ? `churn: ${Math.round(m.churnPerMinute * 100)}% of the nodes leave per minute without goodbye and as many join (new ids), both Poisson; ${Math.round(m.crashShare * 100)}% of leaves are crashed processes (peers notice after one link latency), the rest hosts gone (noticed after ${m.hostGoneDetectMs[0] / 1000}-${m.hostGoneDetectMs[1] / 1000} s, libp2p's connection monitor); dials to a gone host fail after ${m.dialTimeoutMs / 1000} s; a newcomer dials one random live bootstrap node`
      : 'no churn; nodes start one after another (100 ms apart), each bootstrapped to up to 3 random earlier ones, as the real bench starts them',
    `job: ${m.units} units, ${m.units} shards (shardsPerPeer ${m.shardsPerPeer}), ${m.unitGflop} GFLOP, ${m.bytesInPerUnit} B in and ${m.bytesOutPerUnit} B out per unit; operator map (relu) with its real reducer`,
    `wire: advert ${c.advertWireBytes} B x ${c.copiesPerAdvert} copies; IHAVE ${c.ihaveBytesPerId} B per id, ids of the last ${c.ihaveHeartbeats} heartbeats to max(${c.ihavePeers}, ${GOSSIP_FACTOR} x non-mesh) peers every ${c.heartbeatMs} ms; ${c.baselineBytesPerConnPerSec} B/s per connection; hello 2 adverts + ${c.helloOverheadBytes} B; a bid exchange ${c.bidExchangeBytes} B`
  ]
}

/** A deterministic 32-bit mix (murmur3's finaliser). */
export function mix32 (x: number): number {
  let h = x >>> 0
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return h >>> 0
}

/** A standard normal from two uniforms (Box-Muller). */
export function normal (u1: number, u2: number): number {
  return Math.sqrt(-2 * Math.log(Math.max(u1, 1e-12))) * Math.cos(2 * Math.PI * u2)
}

export function lognormal (median: number, sigma: number, random: () => number): number {
  return median * Math.exp(sigma * normal(random(), random()))
}

/** Poisson-process gap: exponential with this rate per ms. */
export function expGap (ratePerMs: number, random: () => number): number {
  return -Math.log(Math.max(1 - random(), 1e-12)) / ratePerMs
}

/** One-way latency between two nodes (by their indices), the same whichever asks. */
export function pairLatencyMs (a: number, b: number, seed: number, m: ModelParams): number {
  const lo = Math.min(a, b)
  const hi = Math.max(a, b)
  const h1 = mix32(Math.imul(lo, 0x9e3779b1) ^ mix32(hi + seed))
  const h2 = mix32(h1 ^ 0x5bd1e995)
  const z = normal((h1 + 0.5) / 4294967296, (h2 + 0.5) / 4294967296)
  return Math.min(m.latencyCapMs, m.latencyMedianMs * Math.exp(m.latencySigma * z))
}
