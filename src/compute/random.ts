/**
 * mulberry32: a small, well-mixed 32-bit PRNG, uniform in [0, 1). Seeded
 * data (example inputs, initial weights, benchmark tensors) must be the same
 * on every machine, which Math.random is not.
 */
/** Fisher-Yates in place with `random` (e.g. a prng): the same seed gives the same order everywhere. */
export function shuffleInPlace<T> (items: T[], random: () => number): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1))
    const t = items[i] as T
    items[i] = items[j] as T
    items[j] = t
  }
  return items
}

export function prng (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}
