import { mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { MeshNode } from '../../src/node/mesh-node.ts'
import { generateApiToken, provideApiToken } from '../../src/node/access/index.ts'
import type { MeshNodeInit } from '../../src/node/options.ts'
import type { HostTensor } from '../../src/compute/tensor.ts'

/**
 * One API token for every node a test file starts, in the environment so
 * that clients find it as users' clients do (TENSORMESH_TOKEN).
 */
export const TEST_TOKEN = generateApiToken()
process.env.TENSORMESH_TOKEN = TEST_TOKEN

/** Short adverts so e2e tests run in seconds; expiry is three of these. */
export const TEST_ADVERT_INTERVAL_MS = 400

export async function startNode (init: Partial<MeshNodeInit> = {}): Promise<MeshNode> {
  const dataDir = init.dataDir ?? await mkdtemp(join(tmpdir(), 'tm-node-'))
  await provideApiToken(dataDir, TEST_TOKEN)
  const node = new MeshNode({
    dataDir,
    listen: ['/ip4/127.0.0.1/tcp/0'],
    api: { host: '127.0.0.1', port: 0 },
    backend: 'wasm',
    workers: 1,
    advertIntervalMs: TEST_ADVERT_INTERVAL_MS,
    ...init
  })
  await node.start()
  return node
}

/** Resolves once `node` has `count` peers in its directory (event-driven, no polling). */
export async function waitForPeers (node: MeshNode, count: number, timeoutMs = 20_000): Promise<void> {
  if (node.directory.size >= count) return
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => { cleanup(); reject(new Error(`node saw ${node.directory.size} of ${count} peers after ${timeoutMs} ms`)) }, timeoutMs)
    const check = (): void => {
      if (node.directory.size >= count) { cleanup(); resolve() }
    }
    const cleanup = (): void => {
      clearTimeout(timer)
      node.removeEventListener('peer:join', check)
    }
    node.addEventListener('peer:join', check)
  })
}

/** Starts n nodes, each bootstrapping to the first, and waits until all see each other. */
export async function startMesh (n: number, init: (i: number) => Partial<MeshNodeInit> = () => ({})): Promise<MeshNode[]> {
  const first = await startNode(init(0))
  const boot = first.multiaddrs()
  const rest = await Promise.all(Array.from({ length: n - 1 }, async (_, i) => await startNode({ bootstrap: boot, ...init(i + 1) })))
  const nodes = [first, ...rest]
  await Promise.all(nodes.map(async node => { await waitForPeers(node, n - 1) }))
  return nodes
}

export async function stopAll (nodes: MeshNode[]): Promise<void> {
  await Promise.all(nodes.map(async n => { await n.stop().catch(() => {}) }))
}

/** A float32 tensor of seeded values in [-0.5, 0.5): the same on every run (a linear congruential sequence). */
export function random (shape: number[], seed: number): HostTensor {
  const data = new Float32Array(shape.reduce((a, b) => a * b, 1))
  let x = seed
  for (let i = 0; i < data.length; i++) {
    x = (x * 1103515245 + 12345) % 2147483648
    data[i] = x / 2147483648 - 0.5
  }
  return { dtype: 'float32', shape, data }
}
