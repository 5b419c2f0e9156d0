import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { decodeNpy } from '../../src/compute/npy.ts'
import { jobForm, readJobFile } from '../../src/node/cli/jobs.ts'
import { ApiClient, RemoteJob } from '../../src/node/client/index.ts'
import { alive, exited, pollUntil, startCli, useToken } from '../helpers/cli.ts'
import { provideApiToken } from '../../src/node/access/index.ts'
import { load, numpy, relError } from '../helpers/numpy.ts'
import type { NodeInfo } from '../../src/node/mesh-node.ts'
import type { JobView } from '../../src/node/jobs/job.ts'
import type { ChildProcess } from 'node:child_process'

const INTERVAL_MS = 500
interface Member { peerId: string, api: string, pid: number, multiaddrs: string[], token: string }

let dir: string
beforeAll(() => {
  dir = numpy(`
rng = np.random.default_rng(21)
a = rng.standard_normal((1200, 600)).astype(np.float32)
b = rng.standard_normal((600, 400)).astype(np.float32)
np.save(f'{out}/a.npy', a); np.save(f'{out}/b.npy', b)
np.save(f'{out}/ab.npy', (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float32))
`)
  writeFileSync(join(dir, 'job.json'), JSON.stringify({ op: 'matmul', inputs: { a: 'a.npy', b: 'b.npy' } }))
})

async function submit (api: string): Promise<JobView> {
  const file = join(dir, 'job.json')
  const res = await new ApiClient(api).request('POST', '/v1/jobs', await jobForm(file, await readJobFile(file)))
  return await res.json() as JobView
}

async function resultOf (api: string, id: string): Promise<Float32Array> {
  const res = await new ApiClient(api).request('GET', `/v1/jobs/${id}/result`)
  return decodeNpy(new Uint8Array(await res.arrayBuffer()), 'result').data as Float32Array
}

/** Follows a job and calls `act` once, on the first record for which `when` holds. */
async function runJobWith (api: string, when: (j: JobView) => boolean, act: () => void): Promise<{ job: JobView, acted: boolean }> {
  const submitted = await submit(api)
  let acted = false
  const job = await new RemoteJob(new ApiClient(api), submitted.id).wait((j) => {
    if (!acted && when(j)) {
      acted = true
      act()
    }
  })
  return { job, acted }
}

const runningOn = (j: JobView, peer: string): boolean => j.shards.some(s => s.state === 'running' && s.history.some(h => h.peer === peer && h.ms === undefined))

describe('workers that die or freeze mid-job', () => {
  let testnet: ChildProcess
  let nodes: Member[]

  beforeAll(async () => {
    // Nodes 2-4 are slowed so that their shards are still running whenever the test strikes:
    // node 2 100x (about half a second a shard), the SIGKILL victims 3 and 4 1000x (about five
    // seconds), since on a loaded machine the job record the test acts on can be a few hundred ms
    // old, and a half-second copy may have finished (nothing to reassign) by the time the kill lands.
    // Backup copies on the fast nodes finish their shards meanwhile.
    const started = await startCli(['testnet', '--nodes', '5', '--json', '--workers', '1', '--advert-interval', String(INTERVAL_MS),
      '--inject', '2:slow=100', '--inject', '3:slow=1000', '--inject', '4:slow=1000'])
    testnet = started.child
    nodes = (JSON.parse(started.line) as { nodes: Member[] }).nodes
    useToken({ nodes })
  })

  afterAll(async () => {
    for (const n of nodes ?? []) if (alive(n.pid)) process.kill(n.pid, 'SIGCONT')
    if (testnet !== undefined && testnet.exitCode === null) {
      testnet.kill('SIGTERM')
      await exited(testnet)
    }
  })

  for (const [moment, victimIndex, when] of [
    ['while its first shard runs', 4, (j: JobView, v: string) => runningOn(j, v) && !j.shards.some(s => s.peer === v)],
    ['after half the shards are done', 3, (j: JobView, v: string) => j.progress.done >= j.progress.total / 2 && runningOn(j, v)]
  ] as const) {
    it(`SIGKILL of a worker ${moment}: the result is right and its shard was reassigned`, async () => {
      const coord = nodes[0] as Member
      const victim = nodes[victimIndex] as Member
      const { job, acted } = await runJobWith(coord.api, (j) => when(j, victim.peerId), () => { process.kill(victim.pid, 'SIGKILL') })
      expect(acted).toBe(true)
      expect(job.state).toBe('succeeded')
      expect(relError(await resultOf(coord.api, job.id), (await load(dir, 'ab')).data)).toBeLessThan(1e-4)
      // The shards the victim was running when it died (a shard it finished before is rightly its own).
      const moved = job.shards.filter(s => s.history.some(h => h.peer === victim.peerId && h.error !== undefined))
      expect(moved.length).toBeGreaterThan(0)
      for (const s of moved) {
        expect(s.peer).not.toBe(victim.peerId)
        expect(s.attempts).toBeGreaterThanOrEqual(2)
      }
      // The same through the API a user would read.
      const view = await new ApiClient(coord.api).json<JobView>('GET', `/v1/jobs/${job.id}`)
      expect(view.shards.some(s => s.attempts >= 2 && s.history.some(h => h.peer === victim.peerId && h.error !== undefined))).toBe(true)
    })
  }

  it('SIGSTOP of a worker: the job finishes through reassignment or a backup copy', async () => {
    const coord = nodes[0] as Member
    const victim = nodes[2] as Member
    const { job, acted } = await runJobWith(coord.api, (j) => runningOn(j, victim.peerId), () => { process.kill(victim.pid, 'SIGSTOP') })
    process.kill(victim.pid, 'SIGCONT')
    expect(acted).toBe(true)
    expect(job.state).toBe('succeeded')
    expect(relError(await resultOf(coord.api, job.id), (await load(dir, 'ab')).data)).toBeLessThan(1e-4)
    const frozen = job.shards.filter(s => s.history.some(h => h.peer === victim.peerId))
    expect(frozen.length).toBeGreaterThan(0)
    for (const s of frozen) expect(s.peer).not.toBe(victim.peerId)
  })
})

describe('a coordinator that dies', () => {
  let testnet: ChildProcess
  let peers: Member[]
  let swarmKey: string
  let coord: ChildProcess
  // Every coordinator this block starts, so none outlives the tests.
  const started: ChildProcess[] = []

  beforeAll(async () => {
    const started = await startCli(['testnet', '--nodes', '2', '--json', '--workers', '1', '--advert-interval', String(INTERVAL_MS),
      '--inject', '0:slow=100', '--inject', '1:slow=100'])
    testnet = started.child
    const line = JSON.parse(started.line) as { nodes: Member[], swarmKey: string }
    peers = line.nodes
    swarmKey = line.swarmKey
    useToken(line)
  })

  afterAll(async () => {
    for (const child of started) {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL')
        await exited(child)
      }
    }
    if (testnet !== undefined && testnet.exitCode === null) {
      testnet.kill('SIGTERM')
      await exited(testnet)
    }
  })

  const startCoordinator = async (dataDir: string): Promise<{ child: ChildProcess, api: string }> => {
    // A node joining the testnet's private mesh: its swarm key, and (so one client token serves all) its API token.
    await provideApiToken(dataDir, peers[0]?.token ?? '')
    const { child, line } = await startCli(['start', '--json', '--listen', '/ip4/127.0.0.1/tcp/0', '--api', '127.0.0.1:0', '--workers', '1',
      '--advert-interval', String(INTERVAL_MS), '--data-dir', dataDir, '--log-level', 'warn', '--bootstrap', peers[0]?.multiaddrs[0] ?? '', '--swarm-key', swarmKey])
    started.push(child)
    const api = (JSON.parse(line) as { api: string }).api
    // Wait until it sees both peers, as a user would check with `peers`.
    await pollUntil(async () => (await new ApiClient(api).peers()).length >= 2, 10_000, 'the coordinator does not see both peers')
    return { child, api }
  }

  it('killed and restarted mid-job: finished results are still served and the unfinished job resumes', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'tm-coord-'))
    const first = await startCoordinator(dataDir)
    coord = first.child
    // A job that finishes before the crash.
    const finished = await runJobWith(first.api, () => false, () => {})
    expect(finished.job.state).toBe('succeeded')
    const expected = await resultOf(first.api, finished.job.id)

    // Then a job killed in the middle: the coordinator's own shards are done, the slow peers' are not.
    const submitted = await submit(first.api)
    await followUntil(first.api, submitted.id, (j) => j.progress.done >= 1 && j.shards.some(s => s.state === 'running'))
    coord.kill('SIGKILL')
    await exited(coord)

    const second = await startCoordinator(dataDir)
    coord = second.child
    const again = await new ApiClient(second.api).json<JobView>('GET', `/v1/jobs/${finished.job.id}`)
    expect(again.state).toBe('succeeded')
    expect(await resultOf(second.api, finished.job.id)).toEqual(expected)
    const resumed = await new RemoteJob(new ApiClient(second.api), submitted.id).wait(() => {})
    expect(resumed.state).toBe('succeeded')
    expect(relError(await resultOf(second.api, submitted.id), (await load(dir, 'ab')).data)).toBeLessThan(1e-4)
  })

  it('killed for good: its shards stop on the peers within the lease', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'tm-coord-'))
    const c = await startCoordinator(dataDir)
    coord = c.child
    const submitted = await submit(c.api)
    const serving = async (): Promise<number> => {
      let n = 0
      for (const p of peers) n += (await new ApiClient(p.api).node() as NodeInfo).servingShards
      return n
    }
    await followUntil(c.api, submitted.id, (j) => j.shards.filter(s => s.state === 'running').length >= 2)
    // A peer counts a shard once its inputs have arrived; the job record says "running" from the send.
    await pollUntil(async () => await serving() > 0, 5000, 'no peer is running the job\'s shards')
    coord.kill('SIGKILL')
    await exited(coord)
    // The lease is the stream: a dead coordinator's connection closes and the peers drop its shards.
    await pollUntil(async () => await serving() === 0, 3000, 'peers still run the dead coordinator\'s shards')
    expect(await serving()).toBe(0)
  })
})

/** Resolves on the first record for which `when` holds; rejects if the job ends first. */
async function followUntil (api: string, id: string, when: (j: JobView) => boolean): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    new RemoteJob(new ApiClient(api), id).wait((j) => { if (when(j)) resolve() }).then(() => { reject(new Error('job ended first')) }, () => {})
  })
}
