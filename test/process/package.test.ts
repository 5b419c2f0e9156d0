import { execFileSync, spawn } from 'node:child_process'
import { mkdtempSync, readdirSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { delimiter, join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { waitGone } from '../helpers/cli.ts'
import type { ChildProcess } from 'node:child_process'

/**
 * The package as a user gets it: `npm pack`, then `npm install ./tensormesh-*.tgz`
 * in an empty folder outside the repo, run by the machine's own Node (20 here),
 * with the `node` dependency bringing Node 22 as in a checkout.
 */

const ROOT = fileURLToPath(new URL('../..', import.meta.url))
/** The install reaches the npm registry (or its cache): a minute on a slow day. */
const INSTALL_TIMEOUT_MS = 240_000

/** PATH without any node_modules/.bin, so `node` and `npm` are the system's. */
function systemPath (): string {
  return (process.env.PATH ?? '').split(delimiter).filter(p => !p.includes('node_modules')).join(delimiter)
}

describe('the npm package', () => {
  let dir: string
  let tarball: string
  let files: string[]
  let testnet: ChildProcess | undefined

  beforeAll(() => {
    const out = mkdtempSync(join(tmpdir(), 'tm-pack-'))
    // prepack builds dist/ (npm's own PATH has the project's Node 22 first); postpack removes it.
    execFileSync('npm', ['pack', '--pack-destination', out, '--json'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] })
    const name = readdirSync(out).find(f => f.endsWith('.tgz'))
    if (name === undefined) throw new Error('npm pack wrote no tarball')
    tarball = join(out, name)
    files = execFileSync('tar', ['tzf', tarball], { encoding: 'utf8' }).split('\n').filter(f => f !== '')
    dir = mkdtempSync(join(tmpdir(), 'tm-user-'))
    writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'user-project', private: true, type: 'module' }))
    execFileSync('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', tarball], {
      cwd: dir, env: { ...process.env, PATH: systemPath() }, stdio: ['ignore', 'pipe', 'pipe'], timeout: INSTALL_TIMEOUT_MS
    })
  }, INSTALL_TIMEOUT_MS + 60_000)

  /** Ends npx and everything under it as Ctrl-C in a terminal would: a signal to its process group. */
  async function stopGroup (child: ChildProcess, signal: NodeJS.Signals): Promise<void> {
    if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return
    const exit = new Promise(resolve => child.once('exit', resolve))
    process.kill(-child.pid, signal)
    await exit
  }

  afterAll(async () => {
    if (testnet !== undefined) await stopGroup(testnet, 'SIGKILL')
  })

  it('ships the built code and the dashboard, and no tests, bench data or examples', () => {
    expect(files).toContain('package/bin/tensormesh.js')
    expect(files).toContain('package/dist/node/cli/index.js')
    expect(files).toContain('package/dist/compute/worker.js')
    expect(files).toContain('package/dist/node/client/index.d.ts')
    expect(files).toContain('package/dist/node/api/dashboard/static/index.html')
    expect(files.filter(f => /^package\/(test|bench|examples|scripts|src|python)\//.test(f))).toEqual([])
  })

  it('npx tensormesh --help works on the system node', () => {
    const systemNode = execFileSync('node', ['--version'], { env: { ...process.env, PATH: systemPath() }, encoding: 'utf8' }).trim()
    const help = execFileSync('npx', ['tensormesh', '--help'], { cwd: dir, env: { ...process.env, PATH: systemPath() }, encoding: 'utf8' })
    expect(help).toMatch(/Usage: tensormesh <command>/)
    expect(systemNode).toMatch(/^v\d+\./)
  })

  it('runs a 2-node testnet, and tensormesh/client multiplies on it', async () => {
    // Its own process group, so the test can stop it the way a terminal does.
    testnet = spawn('npx', ['tensormesh', 'testnet', '--nodes', '2', '--json', '--workers', '1'], { cwd: dir, env: { ...process.env, PATH: systemPath() }, stdio: ['ignore', 'pipe', 'pipe'], detached: true })
    let stderr = ''
    testnet.stderr?.on('data', (d: Buffer) => { stderr += d.toString() })
    const line = await new Promise<string>((resolve, reject) => {
      createInterface({ input: testnet?.stdout as NodeJS.ReadableStream }).once('line', resolve)
      testnet?.once('exit', (code) => { reject(new Error(`testnet exited ${code ?? '?'}: ${stderr}`)) })
    })
    const net = JSON.parse(line) as { nodes: Array<{ api: string, pid: number, token: string }> }
    expect(net.nodes).toHaveLength(2)
    // A user's program: ESM importing the package's client, on the package's Node 22.
    writeFileSync(join(dir, 'use.mjs'), `
import { connect } from 'tensormesh/client'
const mesh = connect(process.argv[2])
const a = { dtype: 'float32', shape: [2, 3], data: Float32Array.from([1, 2, 3, 4, 5, 6]) }
const b = { dtype: 'float32', shape: [3, 2], data: Float32Array.from([1, 0, 0, 1, 1, 1]) }
const job = await mesh.submit({ op: 'matmul', inputs: { a, b } })
const out = await job.result()
console.log(JSON.stringify({ shape: out.shape, data: [...out.data], peers: (await mesh.peers()).length }))
`)
    // The token as a user passes it to any client: TENSORMESH_TOKEN.
    const used = execFileSync(join(dir, 'node_modules', '.bin', 'node'), ['use.mjs', net.nodes[0]?.api ?? ''], { cwd: dir, encoding: 'utf8', env: { ...process.env, TENSORMESH_TOKEN: net.nodes[0]?.token } })
    // [[1,2,3],[4,5,6]] @ [[1,0],[0,1],[1,1]] = [[4,5],[10,11]], exact in float32.
    expect(JSON.parse(used)).toEqual({ shape: [2, 2], data: [4, 5, 10, 11], peers: 1 })
    await stopGroup(testnet, 'SIGINT')
    await waitGone(net.nodes.map(n => n.pid), 15_000)
  })
})
