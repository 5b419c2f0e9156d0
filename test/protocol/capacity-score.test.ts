import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { gossipsub } from '@libp2p/gossipsub'
import { identify } from '@libp2p/identify'
import { tcp } from '@libp2p/tcp'
import { createLibp2p } from 'libp2p'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { PeerLimits } from '../../src/node/access/peer-limits.ts'
import { silentLogger } from '../../src/node/log.ts'
import { PeerDirectory } from '../../src/node/peer-directory.ts'
import { CAPACITY_TOPIC, CapacityService, GRAYLIST_THRESHOLD, capacityScoreParams, capacityScoreThresholds } from '../../src/protocol/capacity/index.ts'
import type { GossipSub } from '@libp2p/gossipsub'
import type { Libp2p } from '@libp2p/interface'

/** A host with gossipsub configured as mesh-node.ts should pass it (the lines this test checks). */
async function host (): Promise<Libp2p<{ pubsub: GossipSub, identify: ReturnType<ReturnType<typeof identify>> }>> {
  return await createLibp2p({
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: {
      identify: identify(),
      pubsub: gossipsub({
        allowPublishToZeroTopicPeers: true,
        floodPublish: true,
        scoreParams: capacityScoreParams(),
        scoreThresholds: capacityScoreThresholds()
      })
    }
  })
}

/** gossipsub's score of `peer` as `at` sees it (the class has getScore; the interface does not). */
function scoreOf (at: Awaited<ReturnType<typeof host>>, peer: string): number {
  return (at.services.pubsub as unknown as { getScore: (id: string) => number }).getScore(peer)
}

describe('gossipsub scoring of the capacity topic (real hosts on loopback)', () => {
  let honest: Awaited<ReturnType<typeof host>>
  let liar: Awaited<ReturnType<typeof host>>
  let service: CapacityService
  const limits = new PeerLimits()
  const directory = new PeerDirectory({ expiryMs: 60_000 })

  beforeAll(async () => {
    // gossipsub validates the params when it starts: bad weights would throw here.
    honest = await host()
    liar = await host()
    service = new CapacityService(
      { peerId: honest.peerId, pubsub: honest.services.pubsub, directory, log: silentLogger(), guard: limits },
      { intervalMs: 60_000, local: () => ({ backend: 'wasm', cores: 1, memTotalBytes: 1, memFreeBytes: 1, gflops: 1, slots: 1, busy: 0, queued: 0, operators: ['map'], addrs: [] }) }
    )
    service.start()
    liar.services.pubsub.subscribe(CAPACITY_TOPIC)
    await liar.dial(honest.getMultiaddrs())
    // Wait until the liar knows the honest host takes the topic (its subscription arrived).
    await new Promise<void>((resolve) => {
      const check = (): void => {
        if (liar.services.pubsub.getSubscribers(CAPACITY_TOPIC).some(p => p.equals(honest.peerId))) {
          liar.services.pubsub.removeEventListener('subscription-change', check)
          resolve()
        }
      }
      liar.services.pubsub.addEventListener('subscription-change', check)
      check()
    })
  }, 20_000)

  afterAll(async () => {
    service.stop()
    await liar.stop()
    await honest.stop()
  })

  it('a peer whose adverts are rejected loses score until it is graylisted, and each rejection is a strike', async () => {
    const liarId = liar.peerId.toString()
    const before = scoreOf(honest, liarId)
    expect(before).toBeGreaterThan(GRAYLIST_THRESHOLD)
    for (let k = 0; k < 3; k++) {
      await liar.services.pubsub.publish(CAPACITY_TOPIC, Uint8Array.from([0xff, 0xff, 0xff, 0x0f, k]))
      // gossipsub emits nothing for a rejected message: the validator's counter is the signal.
      await expect.poll(() => service.counters.rejected.garbage, { timeout: 5000 }).toBe(k + 1)
    }
    expect(service.counters.rejected.garbage).toBe(3)
    expect(limits.info().strikes.advert).toBe(3)
    // gossipsub caches a score for one heartbeat (1 s), so the drop shows once the cache runs out.
    await expect.poll(() => scoreOf(honest, liarId), { timeout: 5000 }).toBeLessThan(GRAYLIST_THRESHOLD)
    // The liar's own view of us is untouched: scoring is local and only punishes the sender.
    expect(scoreOf(liar, honest.peerId.toString())).toBeGreaterThan(GRAYLIST_THRESHOLD)
  })
})
