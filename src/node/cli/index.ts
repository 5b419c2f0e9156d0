import { homedir } from 'node:os'
import { join, resolve } from 'node:path'
import { parseArgs } from 'node:util'
import { TensormeshError, errorMessage } from '../../errors.ts'
import { parseBackendChoice } from '../../compute/index.ts'
import { submitCommand, printSummary, progressLine } from './jobs.ts'
import { connect, resolveToken } from '../client/index.ts'
import type { MeshClient } from '../client/index.ts'
import { createLogger, LOG_LEVELS } from '../log.ts'
import { SWARM_KEY_FILE, loadOrCreateSwarmKey, parsePeerId, readAllowFile, readSwarmKey, writeSwarmKey } from '../access/index.ts'
import { DEFAULT_RELAY_RESERVATIONS, MeshNode } from '../mesh-node.ts'
import { prepareDataDir } from '../keys.ts'
import { CONNECTION_BOUNDS_LIMITS, DEFAULT_CONNECTION_BOUNDS, checkConnectionBounds } from '../connection-keeper.ts'
import type { ConnectionBounds } from '../connection-keeper.ts'
import { LOSS_MODULUS, MAX_BANDWIDTH_BPS, MIN_BANDWIDTH_BPS, runTestnet } from '../testnet/index.ts'
import type { TestnetInit } from '../testnet/index.ts'
import { DEFAULT_MAX_STORAGE_BYTES, MIN_MAX_STORAGE_BYTES, formatBytes } from '../storage.ts'
import type { MeshNodeInit } from '../options.ts'
import type { FaultInjection } from '../jobs/job-manager.ts'
import type { ParseArgsConfig } from 'node:util'

/** A CLI mistake: printed as one line with the command's name, exit code 2. */
export class UsageError extends TensormeshError {
  constructor (message: string) {
    super('ERR_USAGE', message)
  }
}

type Options = NonNullable<ParseArgsConfig['options']>
type Values = Record<string, string | boolean | Array<string | boolean> | undefined>

interface Command {
  name: string
  summary: string
  usage: string
  options: Options
  run: (values: Values, positionals: string[]) => Promise<number | undefined>
}

export const DEFAULT_API = '127.0.0.1:7070'
export const DEFAULT_API_URL = `http://${DEFAULT_API}`

const common: Options = {
  help: { type: 'boolean', short: 'h' },
  json: { type: 'boolean' }
}

const nodeOptions: Options = {
  'data-dir': { type: 'string' },
  backend: { type: 'string' },
  workers: { type: 'string' },
  'advert-interval': { type: 'string' },
  'log-level': { type: 'string' }
}

/** What every command that talks to a node's API takes. */
const clientOptions: Options = {
  api: { type: 'string' },
  token: { type: 'string' },
  'data-dir': { type: 'string' }
}

const CLIENT_USAGE = `  --token TOKEN        the API token (else TENSORMESH_TOKEN, else DATA_DIR/api-token)
  --data-dir DIR       where to look for the token file (default ~/.tensormesh)`

const commands: Command[] = [
  {
    name: 'start',
    summary: 'run a node daemon in the foreground',
    usage: `tensormesh start [options]

  --listen MA          multiaddr to listen on (repeatable; default /ip4/0.0.0.0/tcp/0)
  --api HOST:PORT      HTTP API address (default ${DEFAULT_API}; port 0 lets the OS pick)
  --bootstrap MA       peer to connect to, e.g. /ip4/10.0.0.2/tcp/4001/p2p/12D3... (repeatable)
  --mdns               find peers on the local network by multicast DNS
  --data-dir DIR       peer key and job journal (default ~/.tensormesh)
  --max-storage BYTES  most the data directory may hold, e.g. 512M, 10G (K, M, G, T are powers
                       of 1024; default ${formatBytes(DEFAULT_MAX_STORAGE_BYTES).replace('.0 ', ' ')}): blobs no job names are evicted, least
                       recently used first; past that, new jobs and uploads get ERR_STORAGE_FULL
  --backend NAME       compute backend: auto, tensorflow-gpu, webgpu, tensorflow, wasm, cpu (default auto)
  --workers N          executor worker threads (default: one per core)
  --advert-interval MS capacity advert period in ms (default 2000)
  --log-level LEVEL    fatal, error, warn, info, debug, trace (default info)
  --json               print one JSON line {peerId, multiaddrs, api, tokenFile} when ready
  --swarm-key FILE     the mesh's pre-shared key (tensormesh swarm-key): only nodes holding it
                       can connect (default DATA_DIR/swarm.key, made on first start: a mesh of one
                       until you copy it to the other nodes)
  --open               join an open mesh: no swarm key, any process that reaches the port may join
  --allow PEERID       accept connections, in or out, only from these peers (repeatable)
  --allow-file FILE    the same, one peer id per line (# comments)
  --no-api-auth        serve the API without its token (only with a loopback --api)
  --no-bulk            send every tensor byte on libp2p streams, offering no bulk channel
                       (set it on every node of a mesh whose nodes cannot reach each
                       other's bulk port)
  --relay-reservations N  peers behind NAT this node relays for at once (default ${DEFAULT_RELAY_RESERVATIONS};
                       0: relay for nobody). A node behind NAT finds out by itself and takes a relay
  --relay-data-limit BYTES  bytes per relayed connection, e.g. 1G (default 0: unlimited)
  --relay-duration-limit S  seconds per relayed connection (default 0: unlimited)
  --no-relay           neither relay for others nor take a relay when behind NAT
  --min-connections N  peers this node dials and keeps outside jobs (default ${DEFAULT_CONNECTION_BOUNDS.min}: gossipsub's mesh
                       and a random set); jobs dial the peers they need on demand
  --max-connections N  connections outside jobs past which it closes inbound ones too (default ${DEFAULT_CONNECTION_BOUNDS.max})
  --connection-idle MS how long a job's connection stays after its last stream (default ${DEFAULT_CONNECTION_BOUNDS.idleMs})
  --inject FAULT       testing only: slow=FACTOR (shards for peers take FACTOR times as long)
                       or wrong (partials for peers are off by one); repeatable`,
    options: {
      ...common, ...nodeOptions, inject: { type: 'string', multiple: true }, 'no-bulk': { type: 'boolean' }, 'min-connections': { type: 'string' }, 'max-connections': { type: 'string' }, 'connection-idle': { type: 'string' }, 'max-storage': { type: 'string' }, listen: { type: 'string', multiple: true }, api: { type: 'string' }, bootstrap: { type: 'string', multiple: true }, mdns: { type: 'boolean' },
      'swarm-key': { type: 'string' }, open: { type: 'boolean' }, allow: { type: 'string', multiple: true }, 'allow-file': { type: 'string' }, 'no-api-auth': { type: 'boolean' },
      'relay-reservations': { type: 'string' }, 'relay-data-limit': { type: 'string' }, 'relay-duration-limit': { type: 'string' }, 'no-relay': { type: 'boolean' }
    },
    run: runStart
  },
  {
    name: 'swarm-key',
    summary: 'write a new pre-shared key for a private mesh',
    usage: `tensormesh swarm-key --out FILE

  --out FILE           where to write the key (PSK v1, mode 0600); an existing file is never overwritten

Give every node of the mesh the same file: tensormesh start --swarm-key FILE.`,
    options: { help: { type: 'boolean', short: 'h' }, out: { type: 'string' } },
    run: async (values) => {
      const out = str(values.out)
      if (out === undefined) throw new UsageError('--out FILE is required')
      await writeSwarmKey(resolve(out))
      process.stdout.write(`wrote a swarm key to ${resolve(out)}; start every node with --swarm-key ${resolve(out)}\n`)
      return 0
    }
  },
  {
    name: 'testnet',
    summary: 'run a local mesh of N daemons as separate processes',
    usage: `tensormesh testnet --nodes N [options]

  --nodes N            number of daemons (1..64)
  --data-dir DIR       parent folder for the nodes' data (default: a fresh temp folder, removed on exit)
  --backend NAME       compute backend for every node (default auto)
  --workers N          worker threads per node (default: the machine's cores shared among the
                       nodes, at least one each)
  --advert-interval MS capacity advert period in ms (default 2000)
  --log-level LEVEL    the daemons' log level (default warn)
  --json               print one JSON line {nodes: [{peerId, api, pid, multiaddrs, token}]} once the mesh is formed
                       (with --netns each entry adds netns, ip, nat; api is reachable from the host)
  --swarm-key FILE     the nodes' pre-shared key (default: a fresh one in the data folder)
  --inject I:FAULT     testing only: give node I a fault (slow=FACTOR or wrong); repeatable
  --netns              Linux, as root: each node in a network namespace of its own, with a veth
                       into a bridge the testnet makes; addresses from 198.18.0.0/15 (RFC 2544)
                       only; the JSON entries gain netns, ip and nat
  --nat I              with --netns: put node I behind a NAT router of its own (masquerade, no
                       inbound connections); repeatable; at least one node must stay reachable
  --bandwidth RATE     with --netns: shape each node's link both ways to RATE (tc tbf), e.g.
                       500kbit, 100mbit, 1gbit (${formatRate(MIN_BANDWIDTH_BPS)} to ${formatRate(MAX_BANDWIDTH_BPS)})
  --loss PCT           with --netns: drop PCT percent of packets both ways (0 < PCT < 100, e.g. 0.5)
  --cpus               pin node i and its workers to CPU i mod the CPU count (taskset); each node
                       then sees one core and runs one worker

Stays in the foreground; SIGINT or SIGTERM stops every node (and with --netns
removes every namespace, link and nft table it made, as it does if it is
killed). Kill or pause single nodes by their pid (kill -9, kill -STOP) to
watch the mesh cope. --netns emulates no latency (it uses no tc netem, which the
kernels it was built on lack).`,
    options: {
      ...common, ...nodeOptions, nodes: { type: 'string' }, inject: { type: 'string', multiple: true }, 'swarm-key': { type: 'string' },
      netns: { type: 'boolean' }, nat: { type: 'string', multiple: true }, bandwidth: { type: 'string' }, loss: { type: 'string' }, cpus: { type: 'boolean' }
    },
    run: async (values) => await runTestnetCommand({
      ...testnetNetworkOptions(values),
      swarmKey: await optionalSwarmKey(values),
      nodes: parseIntFlag(values.nodes, '--nodes', 1, 64, true),
      dataDir: str(values['data-dir']),
      backend: typeof values.backend === 'string' ? parseBackendChoice(values.backend) : undefined,
      workers: values.workers === undefined ? undefined : parseIntFlag(values.workers, '--workers', 1, 256),
      advertIntervalMs: values['advert-interval'] === undefined ? undefined : parseIntFlag(values['advert-interval'], '--advert-interval', 50, 600_000),
      logLevel: parseLogLevel(values['log-level'] ?? 'warn'),
      json: values.json === true,
      inject: parseTestnetFaults(values.inject as string[] | undefined, values.nodes)
    })
  },
  {
    name: 'peers',
    summary: "list the peers a node sees, with their capacity",
    usage: `tensormesh peers [--api URL] [--json]

  --api URL            the node's API (default ${DEFAULT_API_URL})
  --json               print the JSON array of GET /v1/peers
${CLIENT_USAGE}`,
    options: { ...common, ...clientOptions },
    run: runPeers
  },
  {
    name: 'submit',
    summary: 'submit a job file to a node and wait for its result',
    usage: `tensormesh submit [--api URL] JOB.json [--out FILE.npy] [--json]

  JOB.json             {"op": NAME, "inputs": {NAME: "path.npy"}, "params": {...}}; paths relative to the file
  --api URL            the node that coordinates the job (default ${DEFAULT_API_URL})
  --out FILE.npy       write the result there
  --json               print one JSON object {id, state, elapsedMs, output, shards: [{index, peer, attempts, ms}]}
${CLIENT_USAGE}

Exits 0 when the job succeeded, 1 when it failed or was cancelled.`,
    options: { ...common, ...clientOptions, out: { type: 'string' } },
    run: async (values, positionals) => {
      if (positionals.length !== 1) throw new UsageError(`expected one job file, got ${positionals.length}`)
      return await submitCommand({ api: apiUrl(values.api), token: resolveToken({ token: str(values.token), dataDir: str(values['data-dir']) }), file: positionals[0] ?? '', out: str(values.out), json: values.json === true })
    }
  },
  {
    name: 'status',
    summary: "show a job's state, progress and shards",
    usage: `tensormesh status [--api URL] JOB_ID [--json]

  --api URL            the node that coordinates the job (default ${DEFAULT_API_URL})
  --json               print the job record of GET /v1/jobs/:id
${CLIENT_USAGE}`,
    options: { ...common, ...clientOptions },
    run: async (values, positionals) => {
      if (positionals.length !== 1) throw new UsageError(`expected one job id, got ${positionals.length}`)
      const job = await clientOf(values).job(positionals[0] ?? '').view()
      if (values.json === true) process.stdout.write(JSON.stringify(job) + '\n')
      else {
        printSummary(job)
        if (!['succeeded', 'failed', 'cancelled'].includes(job.state)) process.stdout.write(`  ${progressLine(job)}\n`)
      }
      return 0
    }
  },
  {
    name: 'jobs',
    summary: 'list the jobs a node coordinates',
    usage: `tensormesh jobs [--api URL] [--json]

  --api URL            the node (default ${DEFAULT_API_URL})
  --json               print the JSON array of GET /v1/jobs
${CLIENT_USAGE}`,
    options: { ...common, ...clientOptions },
    run: async (values) => {
      const jobs = await clientOf(values).jobs()
      if (values.json === true) {
        process.stdout.write(JSON.stringify(jobs) + '\n')
        return 0
      }
      if (jobs.length === 0) {
        process.stdout.write('no jobs\n')
        return 0
      }
      printTable(['ID', 'OP', 'STATE', 'SHARDS', 'SECONDS'], jobs.map(j => [j.id, j.op, j.state, `${j.progress.done}/${j.progress.total}`, j.elapsedMs === undefined ? '-' : (j.elapsedMs / 1000).toFixed(2)]))
      return 0
    }
  }
]

function str (v: Values[string]): string | undefined {
  return typeof v === 'string' ? v : undefined
}

/** --min-connections, --max-connections, --connection-idle, checked together (max below min is refused). */
function connectionBounds (values: Values): ConnectionBounds {
  const { min, max, idleMs } = CONNECTION_BOUNDS_LIMITS
  const flag = (name: string, r: { lo: number, hi: number }): number | undefined => values[name] === undefined ? undefined : parseIntFlag(values[name], `--${name}`, r.lo, r.hi)
  const b: Partial<ConnectionBounds> = {}
  const lo = flag('min-connections', min)
  const hi = flag('max-connections', max)
  const idle = flag('connection-idle', idleMs)
  if (lo !== undefined) b.min = lo
  if (hi !== undefined) b.max = hi
  if (idle !== undefined) b.idleMs = idle
  try {
    return checkConnectionBounds(b)
  } catch (err) {
    throw new UsageError(`--min-connections/--max-connections: ${errorMessage(err).replace(/^connections: /, '')}`)
  }
}

function parseIntFlag (v: Values[string], flag: string, min: number, max: number, required = false): number {
  if (v === undefined) {
    if (required) throw new UsageError(`${flag} is required`)
    return min
  }
  const n = typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : NaN
  if (!Number.isSafeInteger(n) || n < min || n > max) throw new UsageError(`${flag} must be an integer from ${min} to ${max}, got "${String(v)}"`)
  return n
}

const BYTE_UNITS: Record<string, number> = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 }

/** `1048576`, `512M`, `10G`, `1.5GiB`, `2tb`: bytes, with K, M, G, T as powers of 1024 (as df -h and docker --memory count). */
export function parseBytesFlag (v: Values[string], flag: string, min: number): number {
  const m = typeof v === 'string' ? /^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$/i.exec(v.trim()) : null
  const n = m === null ? NaN : Math.floor(Number(m[1]) * (BYTE_UNITS[(m[2] ?? '').toUpperCase()] ?? NaN))
  if (!Number.isSafeInteger(n) || n < min) throw new UsageError(`${flag} must be a size of at least ${formatBytes(min)}, in bytes or with a suffix K, M, G or T (e.g. 512M, 10G), got "${String(v)}"`)
  return n
}

function parseLogLevel (v: Values[string]): string {
  const level = typeof v === 'string' ? v : 'info'
  if (!(LOG_LEVELS as readonly string[]).includes(level) && level !== 'silent') throw new UsageError(`--log-level must be one of ${LOG_LEVELS.join(', ')}, got "${level}"`)
  return level
}

/** `slow=5`, `wrong`: faults a node injects into shards it runs for others. */
export function parseFaults (list: string[] | undefined): FaultInjection | undefined {
  if (list === undefined || list.length === 0) return undefined
  const faults: FaultInjection = {}
  for (const item of list) {
    const slow = /^slow=(\d+(?:\.\d+)?)$/.exec(item)
    if (slow !== null && Number(slow[1]) >= 1) faults.slowFactor = Number(slow[1])
    else if (item === 'wrong') faults.wrong = true
    else throw new UsageError(`--inject "${item}" is not a fault; use slow=FACTOR (>= 1) or wrong`)
  }
  return faults
}

function parseTestnetFaults (list: string[] | undefined, nodes: Values[string]): Map<number, string[]> {
  const out = new Map<number, string[]>()
  for (const item of list ?? []) {
    const m = /^(\d+):(.+)$/.exec(item)
    if (m === null) throw new UsageError(`--inject "${item}" must be INDEX:FAULT, e.g. 1:slow=5`)
    const index = Number(m[1])
    if (typeof nodes === 'string' && index >= Number(nodes)) throw new UsageError(`--inject ${item}: there is no node ${index}`)
    parseFaults([m[2] ?? ''])
    out.set(index, [...(out.get(index) ?? []), m[2] ?? ''])
  }
  return out
}

/** `500kbit`, `100mbit`, `1.5gbit` (tc's units: powers of 1000, bits): bit/s. */
export function parseRateFlag (v: Values[string], flag: string): number {
  const m = typeof v === 'string' ? /^(\d+(?:\.\d+)?)(kbit|mbit|gbit)$/i.exec(v.trim()) : null
  const scale: Record<string, number> = { kbit: 1e3, mbit: 1e6, gbit: 1e9 }
  const bps = m === null ? NaN : Math.round(Number(m[1]) * (scale[(m[2] ?? '').toLowerCase()] ?? NaN))
  if (m === null) throw new UsageError(`${flag} must be a rate with a unit kbit, mbit or gbit (e.g. 100mbit, 1gbit), got "${String(v)}"`)
  if (!(bps >= MIN_BANDWIDTH_BPS && bps <= MAX_BANDWIDTH_BPS)) throw new UsageError(`${flag} must be from ${formatRate(MIN_BANDWIDTH_BPS)} to ${formatRate(MAX_BANDWIDTH_BPS)}, got "${String(v)}"`)
  return bps
}

function formatRate (bps: number): string {
  for (const [unit, scale] of [['gbit', 1e9], ['mbit', 1e6], ['kbit', 1e3]] as const) if (bps >= scale) return `${bps / scale}${unit}`
  return `${bps}bit`
}

/** --netns, --nat, --bandwidth, --loss, --cpus into the testnet's options; the network flags need --netns. */
function testnetNetworkOptions (values: Values): Pick<TestnetInit, 'netns' | 'cpus'> {
  const nodes = parseIntFlag(values.nodes, '--nodes', 1, 64, true)
  const natFlags = (values.nat as string[] | undefined) ?? []
  if (values.netns !== true) {
    const without = [natFlags.length > 0 ? '--nat' : '', values.bandwidth !== undefined ? '--bandwidth' : '', values.loss !== undefined ? '--loss' : ''].filter(Boolean)
    if (without.length > 0) throw new UsageError(`${without.join(' and ')} need${without.length === 1 ? 's' : ''} --netns (a network of namespaces to NAT, shape or drop packets in)`)
    return { cpus: values.cpus === true }
  }
  const nat = new Set<number>()
  for (const item of natFlags) {
    const index = /^\d+$/.test(item) ? Number(item) : NaN
    if (!(index >= 0 && index < nodes)) throw new UsageError(`--nat ${item}: there is no node ${item}; node indices are 0 to ${nodes - 1}`)
    nat.add(index)
  }
  if (nat.size === nodes) throw new UsageError(`--nat puts all ${nodes} nodes behind NAT; at least one must be reachable for the others to bootstrap to`)
  let lossPct: number | undefined
  if (values.loss !== undefined) {
    const v = values.loss
    lossPct = typeof v === 'string' && /^\d+(?:\.\d+)?$/.test(v.trim()) ? Number(v) : NaN
    if (!(lossPct > 0 && lossPct < 100)) throw new UsageError(`--loss must be a percentage above 0 and below 100 (e.g. 1 or 0.5), got "${String(v)}"`)
    if (Math.round(lossPct / 100 * LOSS_MODULUS) < 1) throw new UsageError(`--loss ${String(v)} is below the resolution of ${100 / LOSS_MODULUS} %`)
  }
  return {
    netns: { nat: [...nat].sort((a, b) => a - b), bandwidthBps: values.bandwidth === undefined ? undefined : parseRateFlag(values.bandwidth, '--bandwidth'), lossPct },
    cpus: values.cpus === true
  }
}

/** A testnet whose --netns or --cpus cannot work here (not root, a tool missing) is the caller's setup, as a bad flag is: exit 2. */
async function runTestnetCommand (init: TestnetInit): Promise<number | undefined> {
  try {
    return await runTestnet(init)
  } catch (err) {
    if (err instanceof TensormeshError && err.code === 'ERR_NETNS_PREREQUISITE') throw new UsageError(err.message)
    throw err
  }
}

function parseHostPort (v: string): { host: string, port: number } {
  const m = /^(.*):(\d+)$/.exec(v)
  const port = m === null ? NaN : Number(m[2])
  if (m === null || m[1] === '' || !(port >= 0 && port <= 65535)) throw new UsageError(`--api must be HOST:PORT, e.g. 127.0.0.1:7070, got "${v}"`)
  return { host: (m[1] ?? '').replace(/^\[(.*)\]$/, '$1'), port }
}

/** The API client for a client command's flags: --api, then the token by --token, TENSORMESH_TOKEN, the data dir's file. */
function clientOf (values: Values): MeshClient {
  return connect(apiUrl(values.api), { token: str(values.token), dataDir: str(values['data-dir']) })
}

export function apiUrl (v: Values[string]): string {
  const s = str(v) ?? DEFAULT_API_URL
  const url = /^https?:\/\//.test(s) ? s : `http://${s}`
  try {
    new URL(url) // eslint-disable-line no-new
  } catch {
    throw new UsageError(`--api must be a URL such as ${DEFAULT_API_URL}, got "${s}"`)
  }
  return url
}

/** A --swarm-key file, checked (testnet passes the path on to its nodes). */
async function optionalSwarmKey (values: Values): Promise<string | undefined> {
  const path = str(values['swarm-key'])
  if (path === undefined) return undefined
  await readSwarmKey(resolve(path))
  return resolve(path)
}

/** Errors in a file a flag named (key, allow list): exit code 2. */
const BAD_FILE_CODES = new Set(['ERR_BAD_SWARM_KEY', 'ERR_KEY_EXISTS', 'ERR_ALLOW_FILE', 'ERR_BAD_PEER_ID'])

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|localhost)$/

/**
 * Flags to MeshNodeInit, in one place (reads the key and allow files they
 * name). `notices` are for the user once the node is up.
 */
export async function nodeInit (values: Values): Promise<{ init: MeshNodeInit, notices: string[] }> {
  const notices: string[] = []
  const logLevel = parseLogLevel(values['log-level'])
  // Before anything touches the data directory: a bad flag leaves nothing behind.
  const maxStorageBytes = values['max-storage'] === undefined ? undefined : parseBytesFlag(values['max-storage'], '--max-storage', MIN_MAX_STORAGE_BYTES)
  const dataDir = resolve(str(values['data-dir']) ?? join(homedir(), '.tensormesh'))
  const api = parseHostPort(str(values.api) ?? DEFAULT_API)
  if (values['no-api-auth'] === true && !LOOPBACK.test(api.host)) {
    throw new UsageError(`--no-api-auth is only allowed with a loopback --api (127.0.0.1, ::1, localhost), not ${api.host}`)
  }
  const keyPath = str(values['swarm-key'])
  if (values.open === true && keyPath !== undefined) throw new UsageError('--open and --swarm-key contradict each other: an open mesh has no key')
  let swarmKey: Uint8Array | undefined
  if (values.open !== true) {
    if (keyPath !== undefined) {
      swarmKey = await readSwarmKey(resolve(keyPath))
    } else {
      await prepareDataDir(dataDir)
      const own = await loadOrCreateSwarmKey(join(dataDir, SWARM_KEY_FILE))
      swarmKey = own.key
      if (own.created) notices.push(`no --swarm-key, so this node made its own (${join(dataDir, SWARM_KEY_FILE)}): only nodes started with --swarm-key of that file can join it`)
    }
  }
  const allowed = [...((values.allow as string[] | undefined) ?? []).map(a => parsePeerId(a, '--allow'))]
  const allowFile = str(values['allow-file'])
  if (allowFile !== undefined) allowed.push(...await readAllowFile(resolve(allowFile)))
  const init: MeshNodeInit = {
    dataDir,
    swarmKey,
    allow: values.allow !== undefined || allowFile !== undefined ? allowed : undefined,
    apiAuth: values['no-api-auth'] !== true,
    listen: values.listen as string[] | undefined,
    bootstrap: values.bootstrap as string[] | undefined,
    mdns: values.mdns === true,
    api,
    backend: typeof values.backend === 'string' ? parseBackendChoice(values.backend) : undefined,
    workers: values.workers === undefined ? undefined : parseIntFlag(values.workers, '--workers', 1, 256),
    advertIntervalMs: values['advert-interval'] === undefined ? undefined : parseIntFlag(values['advert-interval'], '--advert-interval', 50, 600_000),
    faults: parseFaults(values.inject as string[] | undefined),
    bulk: values['no-bulk'] !== true,
    connections: connectionBounds(values),
    relay: relayOptions(values),
    maxStorageBytes,
    logger: createLogger(logLevel)
  }
  return { init, notices }
}

/** The relay flags, checked; --no-relay with any other relay flag is a contradiction. */
function relayOptions (values: Values): MeshNodeInit['relay'] {
  const given = ['relay-reservations', 'relay-data-limit', 'relay-duration-limit'].filter(f => values[f] !== undefined)
  if (values['no-relay'] === true) {
    if (given.length > 0) throw new UsageError(`--no-relay contradicts --${given[0] ?? ''}`)
    return false
  }
  return {
    reservations: values['relay-reservations'] === undefined ? undefined : parseIntFlag(values['relay-reservations'], '--relay-reservations', 0, 4096),
    dataLimitBytes: values['relay-data-limit'] === undefined || values['relay-data-limit'] === '0' ? undefined : parseBytesFlag(values['relay-data-limit'], '--relay-data-limit', 64 * 1024),
    durationLimitMs: values['relay-duration-limit'] === undefined ? undefined : parseIntFlag(values['relay-duration-limit'], '--relay-duration-limit', 0, 7 * 24 * 3600) * 1000
  }
}

async function runStart (values: Values): Promise<number | undefined> {
  const { init, notices } = await nodeInit(values)
  const node = new MeshNode(init)
  let stopping = false
  const shutdown = (why: string): void => {
    if (stopping) {
      node.log.warn({ why }, 'second signal, exiting now')
      process.exit(1)
    }
    stopping = true
    node.log.info({ why }, 'stopping')
    node.stop().then(() => { process.exit(0) }, (err: unknown) => {
      node.log.error({ err: errorMessage(err) }, 'stop failed')
      process.exit(1)
    })
  }
  process.on('SIGINT', () => { shutdown('SIGINT') })
  process.on('SIGTERM', () => { shutdown('SIGTERM') })
  // Started by `testnet`: when the parent goes (even by SIGKILL) the IPC channel closes.
  if (process.send !== undefined) process.on('disconnect', () => { shutdown('parent gone') })
  // The testnet starts the other nodes as soon as the first listens, not once it is ready.
  node.addEventListener('listening', (evt) => { process.send?.({ type: 'listening', peerId: node.peerId.toString(), multiaddrs: evt.detail }) })

  await node.start()
  for (const notice of notices) node.log.warn(notice)
  const ready = { peerId: node.peerId.toString(), multiaddrs: node.multiaddrs(), api: node.apiUrl, tokenFile: node.apiTokenFile ?? null }
  if (values.json === true) {
    process.stdout.write(JSON.stringify(ready) + '\n')
  } else {
    process.stdout.write(`tensormesh node ${ready.peerId}\n  api   ${ready.api ?? '-'}\n  addrs ${ready.multiaddrs.join('\n        ')}\n  backend ${node.pool.backend}, ${node.pool.slots} workers, ${node.pool.gflops.toFixed(1)} GFLOPS\n`)
  }
  if (process.send !== undefined) {
    // The parent is the local testnet: it hands the token to whoever runs it.
    process.send({ type: 'ready', ...ready, token: node.apiToken ?? null })
    const report = (): void => { process.send?.({ type: 'peers', count: node.directory.size }) }
    node.addEventListener('peer:join', report)
    node.addEventListener('peer:leave', report)
    report()
  }
  return undefined // keep running until a signal
}

async function runPeers (values: Values): Promise<number> {
  const client = clientOf(values)
  const peers = await client.peers()
  if (values.json === true) {
    process.stdout.write(JSON.stringify(peers) + '\n')
    return 0
  }
  if (peers.length === 0) {
    process.stdout.write('no peers\n')
    return 0
  }
  const rows = peers.map(p => [p.peerId, p.backend, String(p.cores), p.gflops.toFixed(1), `${p.busy}/${p.slots}`, `${(p.lastSeenMs / 1000).toFixed(1)}s`])
  printTable(['PEER', 'BACKEND', 'CORES', 'GFLOPS', 'BUSY', 'SEEN'], rows)
  return 0
}

export function printTable (header: string[], rows: string[][]): void {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map(r => (r[i] ?? '').length)))
  const line = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd()
  process.stdout.write([line(header), ...rows.map(line)].join('\n') + '\n')
}

function usage (): string {
  return `tensormesh: a peer-to-peer compute mesh for tensor work

Usage: tensormesh <command> [options]

Commands:
${commands.map(c => `  ${c.name.padEnd(10)} ${c.summary}`).join('\n')}

Run \`tensormesh <command> --help\` for a command's options.`
}

export async function main (argv: string[]): Promise<void> {
  const [name, ...rest] = argv
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(usage() + '\n')
    return
  }
  const command = commands.find(c => c.name === name)
  if (command === undefined) {
    process.stderr.write(`tensormesh: unknown command "${name}"; commands are ${commands.map(c => c.name).join(', ')}\n`)
    process.exitCode = 2
    return
  }
  try {
    let parsed
    try {
      parsed = parseArgs({ args: rest, options: command.options, strict: true, allowPositionals: true })
    } catch (err) {
      throw new UsageError(errorMessage(err).replace(/\. To specify a positional argument.*$/s, '').replace(/^Unknown option/, 'unknown option'))
    }
    if (parsed.values.help === true) {
      process.stdout.write(command.usage + '\n')
      return
    }
    const code = await command.run(parsed.values, parsed.positionals)
    if (code !== undefined) process.exitCode = code
  } catch (err) {
    const usageErr = err instanceof UsageError
    // A file the flags named that is wrong is the caller's mistake too: exit 2, like a bad flag.
    const badFile = err instanceof TensormeshError && BAD_FILE_CODES.has(err.code)
    process.stderr.write(`tensormesh ${command.name}: ${errorMessage(err)}${usageErr ? ` (see tensormesh ${command.name} --help)` : ''}\n`)
    process.exit(usageErr || badFile ? 2 : 1)
  }
}
