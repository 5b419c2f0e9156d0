// Example jobs the dashboard can submit. Each is data: an operator name,
// params, and input shapes; the values are generated here in the browser
// (seeded, so a run can be repeated) and posted as inline JSON tensors.
// Nothing here is code for the nodes to run.

/** Small seeded PRNG (mulberry32): uniform floats in [0, 1). */
function rng (seed) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** A float32 tensor of the given shape, values uniform in [lo, hi), rounded to 4 decimals to keep the JSON small. */
function tensor (shape, random, lo = -1, hi = 1) {
  const n = shape.reduce((a, b) => a * b, 1)
  const data = new Array(n)
  for (let i = 0; i < n; i++) data[i] = Math.round((lo + (hi - lo) * random()) * 1e4) / 1e4
  return { dtype: 'float32', shape, data }
}

export const EXAMPLES = [
  {
    id: 'matmul-small',
    label: 'matmul 256×128 · 128×64',
    build (seed) {
      const r = rng(seed)
      return { op: 'matmul', params: {}, inputs: { a: tensor([256, 128], r), b: tensor([128, 64], r) } }
    }
  },
  {
    id: 'matmul-medium',
    label: 'matmul 768×256 · 256×256',
    build (seed) {
      const r = rng(seed)
      return { op: 'matmul', params: {}, inputs: { a: tensor([768, 256], r), b: tensor([256, 256], r) } }
    }
  },
  {
    id: 'map-chain',
    label: 'map 1024×256: ×2, +1, relu, sqrt',
    build (seed) {
      const r = rng(seed)
      return {
        op: 'map',
        params: { ops: [{ op: 'mul', value: 2 }, { op: 'add', value: 1 }, { op: 'relu' }, { op: 'sqrt' }] },
        inputs: { x: tensor([1024, 256], r) }
      }
    }
  },
  {
    id: 'reduce-mean',
    label: 'reduce mean over rows of 4096×64',
    build (seed) {
      const r = rng(seed)
      return { op: 'reduce', params: { op: 'mean', axis: 0 }, inputs: { x: tensor([4096, 64], r, 0, 10) } }
    }
  }
]
