import { execFileSync, spawn } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { readNpyFile } from '../../src/compute/npy.ts'
import { allowedCpus, findExecutable } from '../../src/node/testnet/netns.ts'
import { BIN, alive, authHeaders, exited, pollUntil, runCli, startCli, useToken, waitGone } from '../helpers/cli.ts'
import { load, numpy, relError } from '../helpers/numpy.ts'
import type { CliResult } from '../helpers/cli.ts'
import type { PeerView } from '../../src/node/api/server.ts'
import type { ChildProcess } from 'node:child_process'

const INTERVAL_MS = 500

interface Member { peerId: string, api: string, pid: number, multiaddrs: string[], token: string, netns: string, ip: string, nat: boolean }
interface NetnsLine { nodes: Member[], subnet: string }
interface NodeView { reachability: string, relay: { peer: string, addrs: string[] } | null, bulk: { bytesPushed: number } | null }
/** GET /v1/node of a testnet member, from the host namespace. */
async function info (n: Member): Promise<NodeView> {
  return await (await fetch(`${n.api}/v1/node`, { headers: authHeaders() })).json() as NodeView
}
interface JobRecord { shards: Array<{ peer: string, via?: string, bytesIn: number }> }

const IP = findExecutable('ip')
const NFT = findExecutable('nft')
const TC = findExecutable('tc')
const ROOT = process.getuid?.() === 0
const missing = [ROOT ? '' : 'root', IP === undefined ? '`ip`' : '', NFT === undefined ? '`nft`' : '', TC === undefined ? '`tc`' : ''].filter(Boolean)
const SKIP = missing.length > 0 || process.platform !== 'linux'
const SKIPPED = SKIP ? ` (skipped: needs Linux, root, ip, nft and tc; missing ${missing.join(', ') || process.platform})` : ''

const oneLine = (stderr: string): string[] => stderr.trim().split('\n')

/** 198.18.0.0/15, the RFC 2544 range: every address a namespaced testnet hands out. */
function inBenchmarkRange (ip: string): boolean {
  const [a, b] = ip.split('.').map(Number)
  return a === 198 && (b === 18 || b === 19)
}

function run (file: string, args: string[]): string {
  return execFileSync(file, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
}

/** What the host namespace holds that a testnet must leave as it found it. */
function hostState (): { netns: string, links: string[], tables: string } {
  return {
    netns: run(IP ?? 'ip', ['netns', 'list']),
    links: run(IP ?? 'ip', ['-o', 'link']).split('\n').map(l => (l.split(': ')[1] ?? '').split('@')[0] ?? '').filter(Boolean).sort(),
    tables: run(NFT ?? 'nft', ['list', 'tables'])
  }
}

/** The CLI as another user or with another PATH (runCli inherits ours). */
async function runCliWith (args: string[], opts: { env?: NodeJS.ProcessEnv, uid?: number }): Promise<CliResult> {
  const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env ?? process.env, ...(opts.uid === undefined ? {} : { uid: opts.uid, gid: opts.uid }) })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString() })
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>(resolve => { child.on('exit', (c, s) => { resolve([c, s]) }) })
  return { code, signal, stdout, stderr }
}

/** Runs a CommonJS snippet with Node inside a namespace; resolves with its stdout once it exits. */
async function inNs (ns: string, code: string, args: string[]): Promise<string> {
  const child = spawn(IP ?? 'ip', ['netns', 'exec', ns, process.execPath, '-e', code, ...args], { stdio: ['ignore', 'pipe', 'inherit'] })
  let out = ''
  child.stdout.on('data', (d: Buffer) => { out += d.toString() })
  await new Promise(resolve => { child.on('exit', resolve) })
  return out.trim()
}

/** A TCP connect from inside `ns`: "connected", or the error code (ENETUNREACH, ECONNREFUSED, ...), or "timeout". */
const CONNECT = `
const net = require('node:net')
const s = net.connect({ host: process.argv[1], port: Number(process.argv[2]), timeout: 3000 })
s.on('connect', () => { console.log('connected'); s.destroy() })
s.on('timeout', () => { console.log('timeout'); s.destroy() })
s.on('error', (e) => { console.log(e.code) })
`
async function connectFrom (ns: string, host: string, port: number): Promise<string> {
  return await inNs(ns, CONNECT, [host, String(port)])
}

/** Receives one TCP stream on HOST:0, prints its port, then {bytes, ms} from accept to end. */
const SINK = `
const net = require('node:net')
const server = net.createServer((s) => {
  let bytes = 0
  const t0 = performance.now()
  s.on('data', (d) => { bytes += d.length })
  s.on('end', () => { console.log(JSON.stringify({ bytes, ms: performance.now() - t0 })); s.end(); server.close() })
})
server.listen(0, process.argv[1], () => { console.log(server.address().port) })
`
const SOURCE = `
const net = require('node:net')
const s = net.connect({ host: process.argv[1], port: Number(process.argv[2]) }, () => { s.end(Buffer.alloc(Number(process.argv[3]), 7)) })
s.on('data', () => {})
s.on('close', () => { process.exit(0) })
`

/** Sends `bytes` over plain TCP from one namespace to a listener in another; the receiver's {bytes, ms}. */
async function transfer (from: string, to: string, toIp: string, bytes: number): Promise<{ bytes: number, ms: number }> {
  const sink = spawn(IP ?? 'ip', ['netns', 'exec', to, process.execPath, '-e', SINK, toIp], { stdio: ['ignore', 'pipe', 'inherit'] })
  const sinkExit = new Promise(resolve => { sink.once('exit', resolve) })
  const lines = createInterface({ input: sink.stdout })
  const it = lines[Symbol.asyncIterator]()
  const port = Number((await it.next()).value)
  await inNs(from, SOURCE, [toIp, String(port), String(bytes)])
  const result = JSON.parse(String((await it.next()).value)) as { bytes: number, ms: number }
  await sinkExit
  return result
}

const portOf = (ma: string): number => Number(/\/tcp\/(\d+)/.exec(ma)?.[1])

describe('testnet --netns: bad input is one line naming the problem, exit 2', () => {
  it('a --nat index outside 0..N-1, every node behind NAT', async () => {
    const out = await runCli(['testnet', '--nodes', '3', '--netns', '--nat', '3'])
    expect(out.code).toBe(2)
    expect(oneLine(out.stderr)).toHaveLength(1)
    expect(out.stderr).toMatch(/--nat 3: there is no node 3; node indices are 0 to 2/)
    const neg = await runCli(['testnet', '--nodes', '3', '--netns', '--nat=-1'])
    expect(neg.code).toBe(2)
    expect(neg.stderr).toMatch(/--nat -1: there is no node/)
    const all = await runCli(['testnet', '--nodes', '2', '--netns', '--nat', '0', '--nat', '1'])
    expect(all.code).toBe(2)
    expect(oneLine(all.stderr)).toHaveLength(1)
    expect(all.stderr).toMatch(/all 2 nodes behind NAT; at least one must be reachable/)
  })

  it('--nat, --bandwidth and --loss without --netns', async () => {
    for (const [flag, value] of [['--nat', '1'], ['--bandwidth', '100mbit'], ['--loss', '1']] as const) {
      const res = await runCli(['testnet', '--nodes', '2', flag, value])
      expect(res.code).toBe(2)
      expect(oneLine(res.stderr)).toHaveLength(1)
      expect(res.stderr).toContain(`${flag} needs --netns`)
    }
  })

  it('a rate without a known unit or out of range, a loss outside (0, 100)', async () => {
    for (const rate of ['100', '100mb', '1tbit', 'fast']) {
      const res = await runCli(['testnet', '--nodes', '2', '--netns', '--bandwidth', rate])
      expect(res.code).toBe(2)
      expect(oneLine(res.stderr)).toHaveLength(1)
      expect(res.stderr).toMatch(/--bandwidth must be a rate with a unit kbit, mbit or gbit/)
    }
    for (const rate of ['10kbit', '200gbit']) {
      const res = await runCli(['testnet', '--nodes', '2', '--netns', '--bandwidth', rate])
      expect(res.code).toBe(2)
      expect(res.stderr).toMatch(/--bandwidth must be from 100kbit to 100gbit/)
    }
    for (const loss of ['0', '100', '-1', 'lots']) {
      const res = await runCli(['testnet', '--nodes', '2', '--netns', `--loss=${loss}`])
      expect(res.code).toBe(2)
      expect(oneLine(res.stderr)).toHaveLength(1)
      expect(res.stderr).toMatch(/--loss must be a percentage above 0 and below 100/)
    }
  })

  it('--netns without root', async () => {
    // As root, drop to nobody for this one run; as anyone else, the plain run is already not root.
    const res = ROOT ? await runCliWith(['testnet', '--nodes', '2', '--netns'], { uid: 65534 }) : await runCli(['testnet', '--nodes', '2', '--netns'])
    expect(res.code).toBe(2)
    expect(oneLine(res.stderr)).toHaveLength(1)
    expect(res.stderr).toMatch(/--netns needs root/)
  })

  it.skipIf(!ROOT || IP === undefined)(`--netns without ip; --nat or --loss without nft; --bandwidth without tc${ROOT && IP !== undefined ? '' : ' (skipped: needs root and ip)'}`, async () => {
    const empty = mkdtempSync(join(tmpdir(), 'tm-path-'))
    const noIp = await runCliWith(['testnet', '--nodes', '2', '--netns'], { env: { ...process.env, PATH: empty } })
    expect(noIp.code).toBe(2)
    expect(oneLine(noIp.stderr)).toHaveLength(1)
    expect(noIp.stderr).toMatch(/--netns needs `ip` \(iproute2\) on PATH/)
    // A PATH with ip alone: nft and tc are missing.
    const onlyIp = mkdtempSync(join(tmpdir(), 'tm-path-'))
    symlinkSync(IP ?? '', join(onlyIp, 'ip'))
    const env = { ...process.env, PATH: onlyIp }
    const nat = await runCliWith(['testnet', '--nodes', '2', '--netns', '--nat', '1'], { env })
    expect(nat.code).toBe(2)
    expect(oneLine(nat.stderr)).toHaveLength(1)
    expect(nat.stderr).toMatch(/--netns needs `nft` \(nftables, for --nat\)/)
    const loss = await runCliWith(['testnet', '--nodes', '2', '--netns', '--loss', '1'], { env })
    expect(loss.stderr).toMatch(/`nft` \(nftables, for --loss\)/)
    const bw = await runCliWith(['testnet', '--nodes', '2', '--netns', '--bandwidth', '1gbit'], { env })
    expect(bw.code).toBe(2)
    expect(bw.stderr).toMatch(/--netns needs `tc` \(iproute2, for --bandwidth\)/)
  })
})

describe.skipIf(SKIP)(`testnet --nodes 3 --netns --nat 2${SKIPPED}`, () => {
  let testnet: ChildProcess
  let net: NetnsLine
  let before: ReturnType<typeof hostState>
  let pid: number

  let jobs: string

  beforeAll(async () => {
    // A transfer-heavy map whose shards cross the bulk channel (over 4 MiB each way), and a matmul.
    jobs = numpy(`
rng = np.random.default_rng(31)
x = (np.arange(4096 * 2048) % 1000 - 500).astype(np.float32).reshape(4096, 2048)
np.save(f'{out}/x.npy', x); np.save(f'{out}/x2.npy', x * 2)
a = rng.standard_normal((600, 256)).astype(np.float32)
b = rng.standard_normal((256, 64)).astype(np.float32)
np.save(f'{out}/a.npy', a); np.save(f'{out}/b.npy', b)
np.save(f'{out}/ab.npy', (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float32))
json.dump({'op': 'map', 'inputs': {'x': 'x.npy'}, 'params': {'ops': [{'op': 'mul', 'value': 2}]}, 'schedule': {'shardsPerPeer': 1, 'backups': False}}, open(f'{out}/map.json', 'w'))
json.dump({'op': 'matmul', 'inputs': {'a': 'a.npy', 'b': 'b.npy'}, 'schedule': {'backups': False}}, open(f'{out}/matmul.json', 'w'))
`)
    before = hostState()
    const started = await startCli(['testnet', '--nodes', '3', '--netns', '--nat', '2', '--json', '--workers', '1', '--advert-interval', String(INTERVAL_MS)])
    testnet = started.child
    pid = testnet.pid ?? 0
    net = JSON.parse(started.line) as NetnsLine
    useToken(net)
  })

  afterAll(async () => {
    if (testnet !== undefined && testnet.exitCode === null) {
      testnet.kill('SIGTERM')
      await exited(testnet)
    }
  })

  it('each entry names its namespace (carrying the testnet pid), its libp2p ip and whether it is behind NAT', () => {
    expect(net.nodes.map(n => n.netns)).toEqual([0, 1, 2].map(i => `tm-${pid}-node${i}`))
    expect(net.nodes.map(n => n.nat)).toEqual([false, false, true])
    const bridge = net.subnet.replace(/\.0\/24$/, '.')
    expect(net.nodes[0]?.ip.startsWith(bridge)).toBe(true)
    expect(net.nodes[1]?.ip.startsWith(bridge)).toBe(true)
    expect(net.nodes[2]?.ip).toMatch(/^198\.19\./)
    for (const n of net.nodes) {
      expect(inBenchmarkRange(n.ip)).toBe(true)
      expect(n.multiaddrs.some(a => a.startsWith(`/ip4/${n.ip}/tcp/`))).toBe(true)
      expect(n.token).toMatch(/^[0-9a-f]{64}$/)
      expect(alive(n.pid)).toBe(true)
    }
  })

  it('every address in our namespaces and on our host links is from 198.18.0.0/15; only the NATed node has a default route', () => {
    const ours = run(IP ?? 'ip', ['netns', 'list']).split('\n').map(l => l.split(' ')[0] ?? '').filter(n => n.startsWith(`tm-${pid}-`))
    expect(ours.sort()).toEqual([`tm-${pid}-nat2`, `tm-${pid}-node0`, `tm-${pid}-node1`, `tm-${pid}-node2`])
    for (const ns of ours) {
      const addrs = run(IP ?? 'ip', ['-n', ns, '-o', 'addr']).split('\n').filter(l => l !== '' && !/: lo /.test(l))
      expect(addrs.length).toBeGreaterThan(0)
      for (const line of addrs) {
        const m = /\binet (\d+\.\d+\.\d+\.\d+)\//.exec(line)
        expect(m, `${ns}: ${line} (IPv4 from 198.18.0.0/15 only, no IPv6)`).not.toBeNull()
        expect(inBenchmarkRange(m?.[1] ?? '')).toBe(true)
      }
      const routes = run(IP ?? 'ip', ['-n', ns, 'route'])
      if (ns === `tm-${pid}-node2`) expect(routes).toMatch(/^default via 198\.19\.2\.1 /m)
      else expect(routes).not.toMatch(/default/)
    }
    const hostLinks = run(IP ?? 'ip', ['-o', 'addr']).split('\n').filter(l => l.includes(`tm${pid}-`))
    expect(hostLinks.length).toBeGreaterThan(0)
    for (const line of hostLinks) {
      const m = /\binet (\d+\.\d+\.\d+\.\d+)\//.exec(line)
      expect(m, line).not.toBeNull()
      expect(inBenchmarkRange(m?.[1] ?? '')).toBe(true)
    }
    for (const name of hostState().links.filter(l => l.startsWith(`tm${pid}-`))) expect(name.length).toBeLessThanOrEqual(15)
  })

  it('GET /v1/node answers through each entry\'s api from the host namespace', async () => {
    for (const n of net.nodes) {
      const res = await fetch(`${n.api}/v1/node`, { headers: authHeaders() })
      expect(res.status).toBe(200)
      expect(((await res.json()) as { peerId: string }).peerId).toBe(n.peerId)
    }
  })

  it('the NAT is honest: reachable nodes cannot open a connection to the NATed node; it can connect out', async () => {
    const [n0, n1, natted] = net.nodes
    if (n0 === undefined || n1 === undefined || natted === undefined) throw new Error('three nodes expected')
    const natPort = portOf(natted.multiaddrs.find(a => a.startsWith(`/ip4/${natted.ip}/`)) ?? '')
    const n0Port = portOf(n0.multiaddrs.find(a => a.startsWith(`/ip4/${n0.ip}/`)) ?? '')
    const router = `tm-${pid}-nat2`
    const routerIp = /inet (198\.18\.\d+\.\d+)\//.exec(run(IP ?? 'ip', ['-n', router, '-o', '-4', 'addr']))?.[1] ?? ''
    const apiUrl = new URL(natted.api)
    // The port is open: the router, on the node's own LAN, reaches it.
    expect(await connectFrom(router, natted.ip, natPort)).toBe('connected')
    for (const from of [n0, n1]) {
      // No route to the inner address, no port forwarding on the router, no route to the management link.
      expect(await connectFrom(from.netns, natted.ip, natPort)).not.toBe('connected')
      expect(await connectFrom(from.netns, routerIp, natPort)).not.toBe('connected')
      expect(await connectFrom(from.netns, apiUrl.hostname, Number(apiUrl.port))).not.toBe('connected')
    }
    expect(await connectFrom(natted.netns, n0.ip, n0Port)).toBe('connected')
  })

  // The jobs below run on this testnet in this order. The map job goes first: it is transfer-bound,
  // and once the coordinator has measured its links the split rightly keeps most of it at home.
  it('the NATed node knows it is private and holds a relay; the reachable ones are public', async () => {
    await pollUntil(async () => (await info(net.nodes[2] as Member)).relay !== null, 30_000, 'the NATed node took no relay')
    const natted = await info(net.nodes[2] as Member)
    expect(natted.reachability).toBe('private')
    expect(natted.relay?.addrs.some(a => a.includes('/p2p-circuit'))).toBe(true)
    await pollUntil(async () => (await Promise.all(net.nodes.slice(0, 2).map(info))).every(i => i.reachability === 'public'), 30_000, 'the reachable nodes never learned they are public')
  })

  it('a job from a reachable node runs on all three, the NATed node included, whose 4 MiB+ partial it pushes over a connection it dialed', async () => {
    const api = net.nodes[0]?.api ?? ''
    const natted = net.nodes[2] as Member
    const pushedBefore = (await info(natted)).bulk?.bytesPushed ?? 0
    const res = await runCli(['submit', '--api', api, join(jobs, 'map.json'), '--out', join(jobs, 'map-out.npy'), '--json'])
    expect(res.stderr).toBe('')
    expect(res.code).toBe(0)
    const job = JSON.parse(res.stdout) as { id: string, state: string }
    expect(job.state).toBe('succeeded')
    // x * 2 is exact in float32: every element equals numpy's.
    const got = await readNpyFile(join(jobs, 'map-out.npy'))
    const want = await load(jobs, 'x2')
    let wrong = 0
    for (let i = 0; i < want.data.length; i++) if (got.data[i] !== want.data[i]) wrong++
    expect(wrong).toBe(0)
    const record = await (await fetch(`${api}/v1/jobs/${job.id}`, { headers: authHeaders() })).json() as JobRecord
    expect(new Set(record.shards.map(s => s.peer))).toEqual(new Set(net.nodes.map(n => n.peerId)))
    const mine = record.shards.filter(s => s.peer === natted.peerId)
    for (const s of mine) expect(s.via).toBe('direct')
    const pushed = (await info(natted)).bulk?.bytesPushed ?? 0
    expect(pushed - pushedBefore).toBe(mine.reduce((n, s) => n + s.bytesIn, 0))
  })

  for (const [at, label] of [[0, 'a reachable node'], [2, 'the NATed node']] as const) {
    it(`a matmul submitted to ${label} runs shards on all three and equals numpy`, async () => {
      const api = net.nodes[at]?.api ?? ''
      const out = join(jobs, `mm-${at}.npy`)
      const res = await runCli(['submit', '--api', api, join(jobs, 'matmul.json'), '--out', out, '--json'])
      expect(res.stderr).toBe('')
      expect(res.code).toBe(0)
      const job = JSON.parse(res.stdout) as { id: string, state: string, shards: Array<{ peer: string }> }
      expect(job.state).toBe('succeeded')
      expect(new Set(job.shards.map(s => s.peer))).toEqual(new Set(net.nodes.map(n => n.peerId)))
      expect(relError((await readNpyFile(out)).data, (await load(jobs, 'ab')).data)).toBeLessThan(1e-4)
    })
  }

  it('SIGTERM removes every namespace, link and nft table it made', async () => {
    testnet.kill('SIGTERM')
    expect(await exited(testnet)).toBe(0)
    await waitGone(net.nodes.map(n => n.pid), 5000)
    expect(hostState()).toEqual(before)
  })
})

describe.skipIf(SKIP)(`testnets --netns --bandwidth 100mbit and --netns --loss 1, at once${SKIPPED}`, () => {
  let dir: string
  let before: ReturnType<typeof hostState>
  const nets: Array<{ child: ChildProcess, net: NetnsLine }> = []
  const JOB_OPTS = ['--nodes', '2', '--netns', '--json', '--workers', '1', '--advert-interval', String(INTERVAL_MS)]

  beforeAll(async () => {
    dir = numpy(`
rng = np.random.default_rng(12)
a = rng.standard_normal((96, 80)).astype(np.float32)
b = rng.standard_normal((80, 40)).astype(np.float32)
np.save(f'{out}/a.npy', a); np.save(f'{out}/b.npy', b)
np.save(f'{out}/ab.npy', (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float32))
`)
    writeFileSync(join(dir, 'job.json'), JSON.stringify({ op: 'matmul', inputs: { a: 'a.npy', b: 'b.npy' }, params: {} }))
    before = hostState()
    // Started together: each must find a subnet of its own.
    const started = await Promise.all([
      startCli(['testnet', ...JOB_OPTS, '--bandwidth', '100mbit']),
      startCli(['testnet', ...JOB_OPTS, '--loss', '1'])
    ])
    for (const s of started) nets.push({ child: s.child, net: JSON.parse(s.line) as NetnsLine })
    useToken(nets[0]?.net ?? { nodes: [] })
  })

  afterAll(async () => {
    for (const { child } of nets) {
      if (child.exitCode === null) {
        child.kill('SIGTERM')
        await exited(child)
      }
    }
  })

  it('both form, on different bridge subnets', () => {
    const [shaped, lossy] = nets
    expect(shaped?.net.nodes).toHaveLength(2)
    expect(lossy?.net.nodes).toHaveLength(2)
    expect(shaped?.net.subnet).not.toBe(lossy?.net.subnet)
    for (const { net } of nets) for (const n of net.nodes) expect(inBenchmarkRange(n.ip)).toBe(true)
  })

  for (const [which, label] of [[0, '100mbit'], [1, 'loss 1%']] as const) {
    it(`submit --json runs a matmul on the ${label} testnet and equals numpy`, async () => {
      const entry = nets[which]
      if (entry === undefined) throw new Error('testnet missing')
      process.env.TENSORMESH_TOKEN = entry.net.nodes[0]?.token
      const out = join(dir, `out-${which}.npy`)
      const res = await runCli(['submit', '--api', entry.net.nodes[0]?.api ?? '', join(dir, 'job.json'), '--out', out, '--json'])
      expect(res.stderr).toBe('')
      expect(res.code).toBe(0)
      expect((JSON.parse(res.stdout) as { state: string }).state).toBe('succeeded')
      expect(relError((await readNpyFile(out)).data, (await load(dir, 'ab')).data)).toBeLessThan(1e-4)
    })
  }

  it('100mbit: tbf on both ends of each node\'s veth, and a TCP stream between two namespaces does not beat the rate', async () => {
    const entry = nets[0]
    if (entry === undefined) throw new Error('testnet missing')
    const pid = entry.child.pid ?? 0
    for (let i = 0; i < 2; i++) {
      expect(run(TC ?? 'tc', ['qdisc', 'show', 'dev', `tm${pid}-n${i}`])).toMatch(/tbf .*rate 100Mbit/)
      expect(run(TC ?? 'tc', ['-n', `tm-${pid}-node${i}`, 'qdisc', 'show', 'dev', `tm${pid}-n${i}p`])).toMatch(/tbf .*rate 100Mbit/)
    }
    const [n0, n1] = entry.net.nodes
    const bytes = 3 * 1024 * 1024
    const got = await transfer(n0?.netns ?? '', n1?.netns ?? '', n1?.ip ?? '', bytes)
    expect(got.bytes).toBe(bytes)
    // An upper bound only: unshaped veth runs at ~10 Gbit/s here; slower is the machine's business.
    expect(got.bytes * 8 / (got.ms / 1000)).toBeLessThan(110e6)
  })

  it('loss 1%: the nft table in each node\'s namespace drops about 1% of its packets each way; the host has no table of ours', async () => {
    const entry = nets[1]
    if (entry === undefined) throw new Error('testnet missing')
    const pid = entry.child.pid ?? 0
    const [n0, n1] = entry.net.nodes
    // 24 MiB: the ACK chains count fewer packets than the data ones (a quiet machine coalesces
    // more: 12 MiB gave 1,910 ACKs one run), and each chain needs its 2,000.
    const bytes = 24 * 1024 * 1024
    expect((await transfer(n0?.netns ?? '', n1?.netns ?? '', n1?.ip ?? '', bytes)).bytes).toBe(bytes)
    let seen = 0
    let dropped = 0
    for (const n of [n0, n1]) {
      const table = JSON.parse(run(IP ?? 'ip', ['netns', 'exec', n?.netns ?? '', NFT ?? 'nft', '-j', 'list', 'table', 'inet', `tm${pid}_loss`])) as { nftables: Array<{ rule?: { chain: string, expr: Array<{ counter?: { packets: number } }> } }> }
      for (const chain of ['loss_in', 'loss_out']) {
        // Each chain's first rule counts what passes the link, its second what it dropped.
        const [chainSeen = 0, chainDropped = 0] = table.nftables.filter(e => e.rule?.chain === chain).map(e => e.rule?.expr.find(x => x.counter !== undefined)?.counter?.packets ?? 0)
        expect(chainSeen).toBeGreaterThan(2000)
        expect(chainDropped).toBeGreaterThan(0) // 0.99^2000: never by chance
        seen += chainSeen
        dropped += chainDropped
      }
    }
    // ~34,000 segments of the stream (out of node 0, into node 1) and ~4,000+ ACKs: 1% is ~380 drops, and 0.5% to 2% is more than 9 sigma either side.
    expect(dropped / seen).toBeGreaterThan(0.005)
    expect(dropped / seen).toBeLessThan(0.02)
    expect(run(NFT ?? 'nft', ['list', 'tables'])).toBe(before.tables)
  })

  it('SIGTERM removes both testnets\' namespaces, links, qdiscs and nft tables', async () => {
    for (const { child } of nets) child.kill('SIGTERM')
    for (const { child } of nets) expect(await exited(child)).toBe(0)
    await waitGone(nets.flatMap(({ net }) => net.nodes.map(n => n.pid)), 5000)
    expect(hostState()).toEqual(before)
  })
})

describe.skipIf(SKIP)(`testnet --netns killed with SIGKILL${SKIPPED}`, () => {
  it('its guard removes every namespace, link and nft table, and its nodes exit', async () => {
    const before = hostState()
    const { child, line } = await startCli(['testnet', '--nodes', '2', '--netns', '--nat', '1', '--loss', '1', '--bandwidth', '1gbit', '--json', '--workers', '1'])
    const net = JSON.parse(line) as NetnsLine
    const pid = child.pid ?? 0
    expect(run(IP ?? 'ip', ['netns', 'list'])).toContain(`tm-${pid}-nat1`)
    child.kill('SIGKILL')
    await exited(child)
    // The guard runs once the pipe from the dead testnet closes; nothing to wait on but the host's state.
    await pollUntil(() => JSON.stringify(hostState()) === JSON.stringify(before), 30_000, 'namespaces or links of the killed testnet are still there')
    await waitGone(net.nodes.map(n => n.pid), 10_000)
    expect(hostState()).toEqual(before)
  })
})

describe.skipIf(SKIP)(`testnet --netns that fails while starting${SKIPPED}`, () => {
  it('a node that cannot start (a corrupt peer key) ends the testnet with nothing left behind', async () => {
    const before = hostState()
    const data = mkdtempSync(join(tmpdir(), 'tm-netns-bad-'))
    mkdirSync(join(data, 'node-1'))
    writeFileSync(join(data, 'node-1', 'peer.key'), 'not a key')
    const res = await runCli(['testnet', '--nodes', '3', '--netns', '--nat', '2', '--data-dir', data, '--workers', '1'])
    expect(res.code).toBe(1)
    expect(res.stderr).toMatch(/node 1 exited before it was ready/)
    expect(hostState()).toEqual(before)
  })
})

describe.skipIf(findExecutable('taskset') === undefined || process.platform !== 'linux')('testnet --cpus (loopback, no root needed)', () => {
  it('pins node i and every thread of it to CPU i mod the CPU count; each node then reports one core and runs one worker', async () => {
    const { child, line } = await startCli(['testnet', '--nodes', '2', '--cpus', '--json', '--advert-interval', String(INTERVAL_MS)])
    try {
      const net = JSON.parse(line) as { nodes: Array<Member & { cpu: number }> }
      useToken(net)
      const cpus = allowedCpus()
      net.nodes.forEach((n, i) => {
        expect(n.cpu).toBe(cpus[i % cpus.length])
        for (const tid of readdirSync(`/proc/${n.pid}/task`)) {
          let status: string
          try {
            status = readFileSync(`/proc/${n.pid}/task/${tid}/status`, 'utf8')
          } catch {
            continue // a thread that ended meanwhile
          }
          expect(/^Cpus_allowed_list:\s*(\S+)$/m.exec(status)?.[1]).toBe(String(n.cpu))
        }
      })
      const peers = await (await fetch(`${net.nodes[0]?.api ?? ''}/v1/peers`, { headers: authHeaders() })).json() as PeerView[]
      expect(peers.map(p => [p.cores, p.slots])).toEqual([[1, 1]])
    } finally {
      child.kill('SIGTERM')
      await exited(child)
    }
  })
})
