import { createServer } from 'node:net'
import { mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { readNpyFile } from '../../src/compute/npy.ts'
import { alive, authHeaders, exited, runCli, startCli, useToken, waitGone } from '../helpers/cli.ts'
import { load, numpy, relError } from '../helpers/numpy.ts'
import type { PeerView } from '../../src/node/api/server.ts'
import type { ChildProcess } from 'node:child_process'

const INTERVAL_MS = 500

interface TestnetLine { nodes: Array<{ peerId: string, api: string, pid: number, multiaddrs: string[], token: string }> }

describe('testnet through the real CLI', () => {
  let testnet: ChildProcess
  let net: TestnetLine
  let dir: string

  beforeAll(async () => {
    dir = numpy(`
rng = np.random.default_rng(11)
a = rng.standard_normal((53, 97)).astype(np.float32)
b = rng.standard_normal((97, 31)).astype(np.float32)
np.save(f'{out}/a.npy', a); np.save(f'{out}/b.npy', b)
np.save(f'{out}/ab.npy', (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float32))
np.save(f'{out}/c.npy', np.ones((5, 7), np.float32))
`)
    // The test checks that every peer ran its shards: no backup copy may win one.
    writeFileSync(join(dir, 'job.json'), JSON.stringify({ op: 'matmul', inputs: { a: 'a.npy', b: 'b.npy' }, params: {}, schedule: { backups: false } }))
    writeFileSync(join(dir, 'bad.json'), JSON.stringify({ op: 'matmul', inputs: { a: 'a.npy', b: 'c.npy' } }))
    const started = await startCli(['testnet', '--nodes', '3', '--json', '--workers', '1', '--advert-interval', String(INTERVAL_MS)])
    testnet = started.child
    net = JSON.parse(started.line) as TestnetLine
    useToken(net)
  })

  afterAll(async () => {
    if (testnet !== undefined && testnet.exitCode === null) {
      testnet.kill('SIGKILL')
      await exited(testnet)
    }
  })

  it('prints one line naming three nodes, each a separate process', () => {
    expect(net.nodes).toHaveLength(3)
    const pids = new Set(net.nodes.map(n => n.pid))
    expect(pids.size).toBe(3)
    for (const n of net.nodes) {
      expect(alive(n.pid)).toBe(true)
      expect(n.api).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/)
      expect(n.multiaddrs[0]).toMatch(/^\/ip4\/127\.0\.0\.1\/tcp\/\d+\/p2p\//)
    }
  })

  it('peers --json from one node lists the other two with capacity', async () => {
    const first = net.nodes[0]
    const res = await runCli(['peers', '--api', first?.api ?? '', '--json'])
    expect(res.code).toBe(0)
    const peers = JSON.parse(res.stdout) as PeerView[]
    expect(peers.map(p => p.peerId).sort()).toEqual(net.nodes.slice(1).map(n => n.peerId).sort())
    for (const p of peers) {
      expect(p.backend).toMatch(/^(wasm|cpu|tensorflow|tensorflow-gpu)$/)
      expect(p.cores).toBeGreaterThan(0)
      expect(p.gflops).toBeGreaterThan(0)
    }
  })

  it('submit --json runs a numpy-written matmul on all three peers and writes numpy\'s product', async () => {
    const out = join(dir, 'out.npy')
    const res = await runCli(['submit', '--api', net.nodes[1]?.api ?? '', join(dir, 'job.json'), '--out', out, '--json'])
    expect(res.stderr).toBe('')
    expect(res.code).toBe(0)
    const record = JSON.parse(res.stdout) as { id: string, state: string, elapsedMs: number, output: { path: string }, shards: Array<{ index: number, peer: string, attempts: number, ms: number }> }
    expect(record.state).toBe('succeeded')
    expect(record.output.path).toBe(out)
    expect(new Set(record.shards.map(s => s.peer))).toEqual(new Set(net.nodes.map(n => n.peerId)))
    const result = await readNpyFile(out)
    expect(relError(result.data, (await load(dir, 'ab')).data)).toBeLessThan(1e-4)
    const status = await runCli(['status', '--api', net.nodes[1]?.api ?? '', record.id, '--json'])
    expect(JSON.parse(status.stdout)).toMatchObject({ id: record.id, state: 'succeeded' })
  })

  it('refuses a job with mismatched shapes, naming them, and the node keeps serving', async () => {
    const res = await runCli(['submit', '--api', net.nodes[0]?.api ?? '', join(dir, 'bad.json')])
    expect(res.code).not.toBe(0)
    expect(res.stderr.trim().split('\n')).toHaveLength(1)
    expect(res.stderr).toMatch(/\[53, 97\].*\[5, 7\]/)
    const node = await fetch(`${net.nodes[0]?.api ?? ''}/v1/node`, { headers: authHeaders() })
    expect(node.status).toBe(200)
  })

  it('a node killed with SIGKILL leaves the others\' /v1/peers within three intervals plus a second', async () => {
    const victim = net.nodes[2]
    if (victim === undefined) throw new Error('no node')
    process.kill(victim.pid, 'SIGKILL')
    const killedAt = Date.now()
    const survivors = net.nodes.slice(0, 2)
    const deadline = killedAt + 3 * INTERVAL_MS + 1000
    const remaining = new Set(survivors.map(n => n.api))
    // Polling the HTTP API is what a user would do; the deadline is the bound.
    while (remaining.size > 0 && Date.now() < deadline + 2000) {
      for (const api of [...remaining]) {
        const peers = await (await fetch(`${api}/v1/peers`, { headers: authHeaders() })).json() as PeerView[]
        if (!peers.some(p => p.peerId === victim.peerId)) remaining.delete(api)
      }
      await new Promise(resolve => setTimeout(resolve, 50))
    }
    expect(remaining.size).toBe(0)
    expect(Date.now()).toBeLessThanOrEqual(deadline + 100)
  })

  it('SIGTERM stops every node and leaves no process', async () => {
    testnet.kill('SIGTERM')
    expect(await exited(testnet)).toBe(0)
    await waitGone(net.nodes.map(n => n.pid), 5000)
  })
})

describe('testnet killed with SIGKILL', () => {
  it('its daemons notice the closed IPC channel and exit within a few seconds', async () => {
    const { child, line } = await startCli(['testnet', '--nodes', '2', '--json', '--workers', '1'])
    const pids = (JSON.parse(line) as TestnetLine).nodes.map(n => n.pid)
    expect(pids.every(alive)).toBe(true)
    child.kill('SIGKILL')
    await waitGone(pids, 5000)
  })
})

describe('bad input to the CLI: one line naming the problem, non-zero exit', () => {
  const oneLine = (stderr: string): string[] => stderr.trim().split('\n')

  it('unknown command and unknown flag', async () => {
    const cmd = await runCli(['frobnicate'])
    expect(cmd.code).toBe(2)
    expect(cmd.stderr).toMatch(/unknown command "frobnicate"/)
    const flag = await runCli(['start', '--frobnicate'])
    expect(flag.code).toBe(2)
    expect(oneLine(flag.stderr)).toHaveLength(1)
    expect(flag.stderr).toMatch(/--frobnicate/)
  })

  it('--nodes 0', async () => {
    const res = await runCli(['testnet', '--nodes', '0'])
    expect(res.code).toBe(2)
    expect(oneLine(res.stderr)).toHaveLength(1)
    expect(res.stderr).toMatch(/--nodes must be an integer from 1/)
  })

  it('malformed multiaddr', async () => {
    const res = await runCli(['start', '--listen', '/ip4/999.1.1.1/tcp/x', '--api', '127.0.0.1:0', '--data-dir', mkdtempSync(join(tmpdir(), 'tm-'))])
    expect(res.code).not.toBe(0)
    expect(oneLine(res.stderr)).toHaveLength(1)
    expect(res.stderr).toMatch(/--listen: "\/ip4\/999\.1\.1\.1\/tcp\/x" is not a valid TCP multiaddr/)
  })

  it('port in use, for the API and for libp2p', async () => {
    const server = createServer()
    await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
    const port = (server.address() as { port: number }).port
    try {
      const api = await runCli(['start', '--listen', '/ip4/127.0.0.1/tcp/0', '--api', `127.0.0.1:${port}`, '--data-dir', mkdtempSync(join(tmpdir(), 'tm-'))])
      expect(api.code).not.toBe(0)
      expect(oneLine(api.stderr).filter(l => !l.startsWith('{'))).toHaveLength(1)
      expect(api.stderr).toMatch(/address already in use/)
      const p2p = await runCli(['start', '--listen', `/ip4/127.0.0.1/tcp/${port}`, '--api', '127.0.0.1:0', '--data-dir', mkdtempSync(join(tmpdir(), 'tm-'))])
      expect(p2p.code).not.toBe(0)
      expect(p2p.stderr).toMatch(new RegExp(`cannot listen on /ip4/127.0.0.1/tcp/${port}: address already in use`))
    } finally {
      server.close()
    }
  })

  it('unwritable data directory', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'tm-')), 'a-file')
    writeFileSync(file, '')
    // Root ignores permission bits, so use a path under a regular file.
    const res = await runCli(['start', '--listen', '/ip4/127.0.0.1/tcp/0', '--api', '127.0.0.1:0', '--data-dir', join(file, 'data')])
    expect(res.code).not.toBe(0)
    expect(oneLine(res.stderr)).toHaveLength(1)
    expect(res.stderr).toMatch(/data directory .*a-file\/data is not writable/)
  })

  it('swarm-key writes a PSK v1 key readable by its owner only, and never overwrites one', async () => {
    const out = join(mkdtempSync(join(tmpdir(), 'tm-key-')), 'mesh.key')
    const made = await runCli(['swarm-key', '--out', out])
    expect(made.code).toBe(0)
    expect(readFileSync(out, 'utf8')).toMatch(/^\/key\/swarm\/psk\/1\.0\.0\/\n\/base16\/\n[0-9a-f]{64}\n$/)
    expect(statSync(out).mode & 0o777).toBe(0o600)
    const before = readFileSync(out, 'utf8')
    const again = await runCli(['swarm-key', '--out', out])
    expect(again.code).toBe(2)
    expect(oneLine(again.stderr)).toHaveLength(1)
    expect(again.stderr).toMatch(/exists; a swarm key is never overwritten/)
    expect(readFileSync(out, 'utf8')).toBe(before)
  })

  it('a malformed key file, a bad peer id in an allow file, --no-api-auth off loopback: one line naming it, exit 2', async () => {
    const work = mkdtempSync(join(tmpdir(), 'tm-bad-'))
    const key = join(work, 'bad.key')
    writeFileSync(key, '/key/swarm/psk/1.0.0/\n/base16/\nnot-hex\n')
    const badKey = await runCli(['start', '--swarm-key', key, '--api', '127.0.0.1:0', '--data-dir', join(work, 'a')])
    expect(badKey.code).toBe(2)
    expect(oneLine(badKey.stderr)).toHaveLength(1)
    expect(badKey.stderr).toContain(`swarm key ${key}, line 3: expected 64 hex digits`)
    const allow = join(work, 'allow.txt')
    writeFileSync(allow, '# friends\n12D3KooWQMJva4ahgoFetbHXK8SiJHVDYZoyfptSs2ngWMBVriSQ\n\nnot-a-peer-id # typo\n')
    const badAllow = await runCli(['start', '--allow-file', allow, '--api', '127.0.0.1:0', '--data-dir', join(work, 'b')])
    expect(badAllow.code).toBe(2)
    expect(oneLine(badAllow.stderr)).toHaveLength(1)
    expect(badAllow.stderr).toContain(`${allow}:4: "not-a-peer-id" is not a peer id`)
    const open = await runCli(['start', '--no-api-auth', '--api', '0.0.0.0:0', '--data-dir', join(work, 'c')])
    expect(open.code).toBe(2)
    expect(open.stderr).toMatch(/--no-api-auth is only allowed with a loopback --api/)
  })

  it('--help for each command', async () => {
    for (const cmd of ['start', 'testnet', 'swarm-key', 'peers', 'submit', 'status', 'jobs']) {
      const res = await runCli([cmd, '--help'])
      expect(res.code).toBe(0)
      expect(res.stdout).toMatch(new RegExp(`^tensormesh ${cmd}`))
    }
  })
})
