/**
 * Which peers a coordinator asks for bids. Asking every directory peer costs
 * a stream per peer per job: fine at a dozen nodes, 10,000 requests for a
 * one-shard job at 10,000. A job can use at most as many peers as it has
 * units, and gains little past a few dozen (each peer's share shrinks while
 * the coordinator's per-shard work does not), so the number asked follows
 * from the job, not from the mesh:
 *
 *   wanted = min(units, MAX_JOB_PEERS)     peers the split may use
 *   asked  = BID_OVERSAMPLE x wanted       first round
 *
 * Below `asked` candidates everyone is asked, as before. Above, candidates
 * are drawn by weighted sampling without replacement (Efraimidis-Spirakis:
 * key = u^(1/w)), weight = advertised GFLOPS x the share of slots that are
 * free (5% for a full one), so a round favours fast idle peers without
 * starving the rest: the load-aware choice that power-of-k sampling makes,
 * with one draw. A round in which fewer than `wanted` accept widens to the
 * next candidates in the same order, up to BID_ROUNDS rounds.
 */
import { prng } from '../../compute/random.ts'

/** Peers one job is split across at most. */
export const MAX_JOB_PEERS = 32
/** Candidates asked per peer wanted: some decline, some are slow to answer. */
export const BID_OVERSAMPLE = 2
/** Rounds of asking before the job goes with the acceptances it has. */
export const BID_ROUNDS = 3

export interface BidCandidate {
  peerId: string
  gflops: number
  slots: number
  busy: number
  queued: number
}

/** How many peers a job of `units` units may use. */
export function wantedPeers (units: number): number {
  return Math.max(1, Math.min(Math.floor(units), MAX_JOB_PEERS))
}

/** Weight of a candidate: its advertised speed, times the share of its slots not busy or queued (never zero). */
export function candidateWeight (c: BidCandidate): number {
  const slots = Math.max(c.slots, 1)
  const free = Math.max(slots - c.busy - c.queued, 0) / slots
  return Math.max(c.gflops, 1e-9) * (0.05 + 0.95 * free)
}

/**
 * The candidates in the order to ask them: a weighted random permutation
 * (Efraimidis-Spirakis keys), `seed` fixing the draw. Every candidate is in
 * it once; a caller asks a prefix and widens by taking more.
 */
export function bidOrder<C extends BidCandidate> (candidates: C[], seed: number): C[] {
  const u = prng(seed)
  return candidates
    .map(c => ({ c, key: Math.log(Math.max(u(), 1e-300)) / candidateWeight(c) }))
    .sort((a, b) => b.key - a.key)
    .map(x => x.c)
}

/** The first `size` of `order` not asked yet (the caller's next round). */
export function nextRound<C extends BidCandidate> (order: C[], asked: Set<string>, size: number): C[] {
  const out: C[] = []
  for (const c of order) {
    if (out.length >= size) break
    if (!asked.has(c.peerId)) out.push(c)
  }
  return out
}

/**
 * How long a round waits for its slowest answers once enough peers have
 * accepted. A dead or overloaded candidate otherwise holds the whole round
 * for BID_TIMEOUT_MS (3 s), and at scale some candidate of 64 always is
 * (the simulator's bid phase averaged 2-2.6 s); a live peer on a LAN
 * answers within a few ms, across a continent within ~150.
 */
export const BID_STRAGGLER_MS = 250

/**
 * The coordinator's call for bids over `order`: rounds of `nextRound`, each
 * sized to what is still missing times BID_OVERSAMPLE, until `wanted` peers
 * (the coordinator counts as one) accept, the candidates run out, or
 * BID_ROUNDS rounds have gone. A round ends when every candidate has
 * answered, or BID_STRAGGLER_MS after `wanted` have accepted; `late` stands
 * for a candidate that had not answered by then. `ask` answers one
 * candidate and never rejects (a network round trip on a node, a modelled
 * one in the simulator).
 */
export async function gatherBids<C extends BidCandidate, R extends { answer?: { accept: boolean } }> (order: C[], wanted: number, ask: (c: C) => Promise<R>, late: (c: C) => R): Promise<R[]> {
  const asked = new Set<string>()
  const answers: R[] = []
  const accepting = (rs: Array<R | undefined>): number => rs.filter(b => b?.answer?.accept === true).length
  for (let round = 0; round < BID_ROUNDS && asked.size < order.length; round++) {
    const accepted = accepting(answers) + 1
    if (round > 0 && accepted >= wanted) break
    const batch = nextRound(order, asked, Math.max(wanted + 1 - accepted, 1) * BID_OVERSAMPLE)
    for (const c of batch) asked.add(c.peerId)
    const got: Array<R | undefined> = batch.map(() => undefined)
    await new Promise<void>(resolve => {
      let left = batch.length
      let timer: ReturnType<typeof setTimeout> | undefined
      const check = (): void => {
        if (left === 0) {
          clearTimeout(timer)
          resolve()
        } else if (timer === undefined && accepted - 1 + accepting(got) + 1 >= wanted) {
          timer = setTimeout(resolve, BID_STRAGGLER_MS)
        }
      }
      batch.forEach((c, i) => {
        ask(c).then(r => { got[i] = r }, () => {}).finally(() => { left--; check() })
      })
      check()
    })
    answers.push(...got.map((r, i) => r ?? late(batch[i] as C)))
  }
  return answers
}
