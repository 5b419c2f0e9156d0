/**
 * A node started before its bootstrap peer listens (the testnet starts its
 * nodes together) keeps dialing on a short backoff until the peer answers,
 * instead of waiting for the connectivity check an advert interval later.
 */
import { mkdtemp } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { afterAll, describe, expect, it } from 'vitest'
import { loadOrCreateKey, prepareDataDir } from '../../src/node/keys.ts'
import type { MeshNode } from '../../src/node/mesh-node.ts'
import { startNode, stopAll, waitForPeers } from '../helpers/mesh.ts'
import { ModelPool } from '../../scripts/bench/scale.ts'

/** A port nothing listens on now (the OS's pick, released). */
async function freePort (): Promise<number> {
  const server = createServer()
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as { port: number }).port
  await new Promise<void>(resolve => server.close(() => { resolve() }))
  return port
}

describe('bootstrap', () => {
  const nodes: MeshNode[] = []
  afterAll(async () => { await stopAll(nodes) })

  it('a node whose bootstrap peer is not up yet reaches it once it listens, well before its 10-minute connectivity check', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'tm-boot-'))
    const lateDir = join(dir, 'late')
    await prepareDataDir(lateDir)
    const lateId = peerIdFromPrivateKey(await loadOrCreateKey(lateDir)).toString()
    const port = await freePort()
    const early = await startNode({ advertIntervalMs: 600_000, api: false, pool: new ModelPool(1), bootstrap: [`/ip4/127.0.0.1/tcp/${port}/p2p/${lateId}`] })
    nodes.push(early)
    // Its first dial has failed by now: nothing listens there.
    expect(early.libp2p.getPeers().length).toBe(0)
    const late = await startNode({ dataDir: lateDir, advertIntervalMs: 600_000, api: false, pool: new ModelPool(1), listen: [`/ip4/127.0.0.1/tcp/${port}`] })
    nodes.push(late)
    expect(late.peerId.toString()).toBe(lateId)
    await Promise.all([waitForPeers(early, 1, 30_000), waitForPeers(late, 1, 30_000)])
  }, 60_000)
})
