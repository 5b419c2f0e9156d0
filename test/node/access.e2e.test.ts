import { request } from 'node:http'
import { afterAll, describe, expect, it } from 'vitest'
import { generateSwarmKey } from '../../src/node/access/index.ts'
import { pollUntil } from '../helpers/cli.ts'
import { TEST_TOKEN, startNode, stopAll, waitForPeers } from '../helpers/mesh.ts'
import type { MeshNode } from '../../src/node/mesh-node.ts'

/** Resolves after `node` has taken `count` more adverts from `peer`: gossip went round that often. */
async function advertsFrom (node: MeshNode, peer: string, count: number): Promise<void> {
  await new Promise<void>((resolve) => {
    let seen = 0
    const on = (evt: CustomEvent<{ capacity: { peerId: string } }>): void => {
      if (evt.detail.capacity.peerId !== peer || ++seen < count) return
      node.removeEventListener('peer:update', on)
      resolve()
    }
    node.addEventListener('peer:update', on)
  })
}

/** A raw HTTP GET, so the test can set the Host header as a browser after DNS rebinding would. */
async function get (url: string, headers: Record<string, string>): Promise<{ status: number, body: string }> {
  return await new Promise((resolve, reject) => {
    const req = request(url, { headers }, (res) => {
      let body = ''
      res.on('data', (d: Buffer) => { body += d.toString() })
      res.on('end', () => { resolve({ status: res.statusCode ?? 0, body }) })
    })
    req.on('error', reject)
    req.end()
  })
}

describe('a private mesh', () => {
  let nodes: MeshNode[] = []
  afterAll(async () => { await stopAll(nodes) })

  it('nodes without the key, or with another, never join; members count the refused handshakes', async () => {
    const key = generateSwarmKey()
    const a = await startNode({ swarmKey: key })
    nodes.push(a)
    const b = await startNode({ swarmKey: key, bootstrap: a.multiaddrs() })
    nodes.push(b)
    await Promise.all([waitForPeers(a, 1), waitForPeers(b, 1)])
    const other = await startNode({ swarmKey: generateSwarmKey() })
    const open = await startNode({})
    nodes.push(other, open)
    for (const outsider of [other, open]) {
      await expect(outsider.libp2p.dial(a.libp2p.getMultiaddrs()[0]!, { signal: AbortSignal.timeout(10_000) })).rejects.toThrow()
      await expect(a.libp2p.dial(outsider.libp2p.getMultiaddrs()[0]!, { signal: AbortSignal.timeout(10_000) })).rejects.toThrow()
    }
    // Members keep gossiping; the outsiders are never in a member's directory or connections.
    await advertsFrom(a, b.peerId.toString(), 3)
    const outsiders = [other.peerId.toString(), open.peerId.toString()]
    for (const m of [a, b]) {
      expect(m.directory.list().map(e => e.capacity.peerId).filter(p => outsiders.includes(p))).toEqual([])
      expect(m.libp2p.getConnections().map(c => c.remotePeer.toString()).filter(p => outsiders.includes(p))).toEqual([])
    }
    expect(a.info().access.private).toBe(true)
    expect(a.info().access.refused.handshake).toBeGreaterThanOrEqual(2)
    expect(open.directory.size).toBe(0)
  })
})

describe('allowed peers', () => {
  let nodes: MeshNode[] = []
  afterAll(async () => { await stopAll(nodes) })

  it('a node with an allowlist keeps only the listed peers, in and out, and counts the rest', async () => {
    const friend = await startNode({})
    const stranger = await startNode({})
    nodes.push(friend, stranger)
    const picky = await startNode({ allow: [friend.peerId.toString()] })
    nodes.push(picky)
    await friend.libp2p.dial(picky.libp2p.getMultiaddrs()[0]!)
    await waitForPeers(picky, 1)
    // In: the stranger's handshake completes (it may even see a connection for a moment), then picky drops it.
    await stranger.libp2p.dial(picky.libp2p.getMultiaddrs()[0]!, { signal: AbortSignal.timeout(10_000) }).catch(() => {})
    await pollUntil(() => picky.info().access.refused.notAllowed >= 1, 10_000, 'the stranger\'s inbound connection was not refused')
    // Out: picky does not even dial a peer off its list.
    await expect(picky.libp2p.dial(stranger.peerId, { signal: AbortSignal.timeout(10_000) })).rejects.toThrow()
    expect(picky.libp2p.getConnections().map(c => c.remotePeer.toString())).toEqual([friend.peerId.toString()])
    expect(picky.info().access).toMatchObject({ allowlist: 1 })
  })
})

describe('the API token', () => {
  let nodes: MeshNode[] = []
  afterAll(async () => { await stopAll(nodes) })

  it('every /v1 route and /metrics need it; the wrong one is refused; Host must be the API\'s own address', async () => {
    const node = await startNode({})
    nodes.push(node)
    const url = node.apiUrl ?? ''
    const host = new URL(url).host
    const ok = { host, authorization: `Bearer ${TEST_TOKEN}` }
    for (const path of ['/v1/node', '/v1/peers', '/v1/jobs', '/metrics', '/v1/events', '/v1/jobs/x/events']) {
      const none = await get(url + path, { host })
      expect(none.status).toBe(401)
      expect(JSON.parse(none.body)).toMatchObject({ error: { code: 'ERR_UNAUTHORIZED' } })
      expect((await get(url + path, { host, authorization: 'Bearer not-the-token' })).status).toBe(401)
    }
    expect((await get(`${url}/v1/node`, ok)).status).toBe(200)
    // The token in a cookie works only under this port's name.
    expect((await get(`${url}/v1/node`, { host, cookie: `tensormesh_token_${new URL(url).port}=${TEST_TOKEN}` })).status).toBe(200)
    expect((await get(`${url}/v1/node`, { host, cookie: `tensormesh_token_1=${TEST_TOKEN}` })).status).toBe(401)
    // DNS rebinding: the right token, but a name that is not this server's address.
    const rebound = await get(`${url}/v1/node`, { ...ok, host: `attacker.example:${new URL(url).port}` })
    expect(rebound.status).toBe(403)
    expect(JSON.parse(rebound.body)).toMatchObject({ error: { code: 'ERR_BAD_HOST' } })
    expect((await get(`${url}/v1/node`, { ...ok, host: `localhost:${new URL(url).port}` })).status).toBe(200)
    expect((await get(`${url}/v1/node`, { ...ok, host: '127.0.0.1:1' })).status).toBe(403)
    // The dashboard's files need no token; its page asks for one.
    expect((await get(`${url}/dashboard/style.css`, { host })).status).toBe(200)
    expect((await get(`${url}/`, { host })).body).toContain('data-testid="login"')
  })

  it('a node started with apiAuth false serves without a token', async () => {
    const node = await startNode({ apiAuth: false })
    nodes.push(node)
    const url = node.apiUrl ?? ''
    expect((await get(`${url}/v1/node`, { host: new URL(url).host })).status).toBe(200)
    expect(node.apiToken).toBeUndefined()
  })
})
