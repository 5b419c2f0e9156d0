/**
 * Gossipsub peer scoring for the capacity topic. Without a topic entry in
 * `scoreParams.topics`, a `Reject` from our validator costs the sender
 * nothing; with this one, each rejected advert does (P4, invalid message
 * deliveries), quadratically, so a peer that keeps sending bad adverts
 * falls below the graylist threshold and we stop processing its RPCs.
 *
 * Types come from gossipsub's options, since the package exports neither
 * its score types nor createPeerScoreParams; gossipsub fills the fields we
 * leave out with its defaults and validates the whole at start.
 */
import { CAPACITY_TOPIC } from './topic.ts'
import type { GossipsubOpts } from '@libp2p/gossipsub'

type PeerScoreParams = GossipsubOpts['scoreParams']
type PeerScoreThresholds = GossipsubOpts['scoreThresholds']
type TopicScoreParams = NonNullable<PeerScoreParams['topics']>[string]

/**
 * Score per rejected advert, squared: -20, -80, -180 for one, two, three
 * outstanding. An honest peer's positive score is capped at
 * CAPACITY_TOPIC_SCORE_CAP (10), so three rejected adverts take any peer
 * below GRAYLIST_THRESHOLD (-80), two below PUBLISH_THRESHOLD (-50), and
 * one to GOSSIP_THRESHOLD (-10).
 */
export const INVALID_ADVERT_WEIGHT = -20

/**
 * How fast the count of rejected adverts fades. A minute: one bad advert per
 * advert interval (2 s) keeps its sender graylisted, and a peer that stops
 * (a fixed build) is back within a few minutes, while our own strikes and
 * bans (src/node/access/peer-limits.ts) handle what lasts longer.
 */
export const INVALID_ADVERT_HALF_LIFE_MS = 60_000

/** gossipsub's decay interval (its default, and the least it accepts). */
export const SCORE_DECAY_INTERVAL_MS = 1000

/** Largest positive topic score: a long-lived honest peer earns at most this. */
export const CAPACITY_TOPIC_SCORE_CAP = 10

/** gossipsub's default thresholds, named: below these we stop gossiping to, publishing to, and listening to a peer. */
export const GOSSIP_THRESHOLD = -10
export const PUBLISH_THRESHOLD = -50
export const GRAYLIST_THRESHOLD = -80

/**
 * Addresses that never count as colocated (P6). On loopback every node of a
 * local testnet shares 127.0.0.1, and the netns testnet puts its hosts in
 * 198.18.0.0/15 (DESIGN: the benchmarking range), so past gossipsub's
 * threshold of 10 peers per IP a local mesh would graylist itself.
 */
export const COLOCATION_WHITELIST: readonly string[] = ['127.0.0.0/8', '::1/128', '198.18.0.0/15']

/**
 * gossipsub checks the whitelist with `has(ip)`, one address at a time; this
 * Set answers for the subnets it holds (IPv4 CIDRs; IPv6 exact addresses).
 */
export class SubnetSet extends Set<string> {
  private readonly v4: Array<{ net: number, mask: number }> = []

  constructor (cidrs: readonly string[]) {
    super()
    for (const c of cidrs) {
      const [addr = '', bits = ''] = c.split('/')
      const n = ipv4(addr)
      if (n === undefined) {
        super.add(addr.toLowerCase())
        continue
      }
      const len = Number(bits === '' ? 32 : bits)
      const mask = len === 0 ? 0 : (~0 << (32 - len)) >>> 0
      this.v4.push({ net: (n & mask) >>> 0, mask })
    }
  }

  override has (ip: string): boolean {
    const n = ipv4(ip)
    if (n === undefined) return super.has(ip.toLowerCase())
    return this.v4.some(r => ((n & r.mask) >>> 0) === r.net)
  }
}

function ipv4 (s: string): number | undefined {
  const parts = s.split('.')
  if (parts.length !== 4) return undefined
  let n = 0
  for (const p of parts) {
    if (!/^\d{1,3}$/.test(p)) return undefined
    const v = Number(p)
    if (v > 255) return undefined
    n = n * 256 + v
  }
  return n
}

/** Per-interval decay factor for a half-life. */
function decayFor (halfLifeMs: number): number {
  return Math.pow(0.5, SCORE_DECAY_INTERVAL_MS / halfLifeMs)
}

/** The capacity topic's score parameters: every field set, so nothing hides in a default. */
export function capacityTopicScoreParams (): TopicScoreParams {
  return {
    topicWeight: 1,
    // P1: a little credit for time in the mesh (0.01 per second, for five minutes at most: +3).
    timeInMeshWeight: 0.01,
    timeInMeshQuantum: 1000,
    timeInMeshCap: 300,
    // P2: credit for adverts a peer delivered first; a peer publishes one per interval (+5 at most).
    firstMessageDeliveriesWeight: 0.5,
    firstMessageDeliveriesDecay: decayFor(10_000),
    firstMessageDeliveriesCap: 10,
    // P3/P3b off: with floodPublish most adverts arrive straight from their
    // author, so mesh-delivery counts say little, and in a mesh of two or
    // three nodes any threshold would punish honest peers.
    meshMessageDeliveriesWeight: 0,
    meshMessageDeliveriesDecay: 0.5,
    meshMessageDeliveriesCap: 100,
    meshMessageDeliveriesThreshold: 1,
    meshMessageDeliveriesWindow: 10,
    meshMessageDeliveriesActivation: 5000,
    meshFailurePenaltyWeight: 0,
    meshFailurePenaltyDecay: 0.5,
    // P4: what this is for.
    invalidMessageDeliveriesWeight: INVALID_ADVERT_WEIGHT,
    invalidMessageDeliveriesDecay: decayFor(INVALID_ADVERT_HALF_LIFE_MS)
  }
}

/** `scoreParams` for gossipsub({...}): the capacity topic scored, local subnets not colocated. */
export function capacityScoreParams (): PeerScoreParams {
  return {
    topics: { [CAPACITY_TOPIC]: capacityTopicScoreParams() },
    topicScoreCap: CAPACITY_TOPIC_SCORE_CAP,
    decayInterval: SCORE_DECAY_INTERVAL_MS,
    IPColocationFactorWhitelist: new SubnetSet(COLOCATION_WHITELIST)
  }
}

/** `scoreThresholds` for gossipsub({...}): gossipsub's defaults, named here so the weights above can be checked against them. */
export function capacityScoreThresholds (): PeerScoreThresholds {
  return {
    gossipThreshold: GOSSIP_THRESHOLD,
    publishThreshold: PUBLISH_THRESHOLD,
    graylistThreshold: GRAYLIST_THRESHOLD,
    acceptPXThreshold: 10,
    opportunisticGraftThreshold: 20
  }
}
