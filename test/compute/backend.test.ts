import { describe, expect, it } from 'vitest'
import { BACKEND_CANDIDATES, BACKEND_NAMES, loadBackend, parseBackendChoice, resolveBackend } from '../../src/compute/backend.ts'
import type { BackendCandidate, BackendName } from '../../src/compute/backend.ts'
import type { TF } from '../../src/compute/operators/types.ts'
import { asyncCodeOf as codeOf } from '../helpers/codes.ts'

/** Candidates that load or not as told, to test the ordering without the machine's packages. */
function fake (loads: Partial<Record<BackendName, boolean>>): BackendCandidate[] {
  return BACKEND_NAMES.map(name => ({
    name,
    available: async () => loads[name] === true ? { ok: true } : { ok: false, reason: `${name} is missing` },
    load: async () => { throw new Error('not in this test') }
  }))
}

describe('backend selection', () => {
  it('has one candidate per name, in preference order', () => {
    expect(BACKEND_CANDIDATES.map(c => c.name)).toEqual([...BACKEND_NAMES])
    expect(BACKEND_NAMES).toEqual(['tensorflow-gpu', 'webgpu', 'tensorflow', 'wasm', 'cpu'])
  })

  it('auto picks the first candidate that loads', async () => {
    expect(await resolveBackend('auto', fake({ tensorflow: true, wasm: true, cpu: true }))).toBe('tensorflow')
    expect(await resolveBackend('auto', fake({ wasm: true, cpu: true }))).toBe('wasm')
    expect(await resolveBackend('auto', fake({ cpu: true }))).toBe('cpu')
    expect(await codeOf(resolveBackend('auto', fake({})))).toBe('ERR_BACKEND_UNAVAILABLE')
  })

  it('an explicit name that does not load is ERR_BACKEND_UNAVAILABLE naming it and what is available', async () => {
    const err = await resolveBackend('tensorflow-gpu', fake({ wasm: true, cpu: true })).catch((e: unknown) => e as Error & { code: string })
    expect(err).toBeInstanceOf(Error)
    expect((err as { code: string }).code).toBe('ERR_BACKEND_UNAVAILABLE')
    expect((err as Error).message).toContain("'tensorflow-gpu'")
    expect((err as Error).message).toContain('available: wasm, cpu')
    expect(await resolveBackend('cpu', fake({ wasm: true, cpu: true }))).toBe('cpu')
  })

  it('parses CLI strings', () => {
    expect(parseBackendChoice('auto')).toBe('auto')
    expect(parseBackendChoice('wasm')).toBe('wasm')
    expect(() => parseBackendChoice('webgl')).toThrow(expect.objectContaining({ code: 'ERR_UNKNOWN_BACKEND' }))
  })

  it('on this machine, auto resolves to a real candidate and the JS backends load', async () => {
    const name = await resolveBackend('auto')
    expect(BACKEND_NAMES).toContain(name)
    // The wasm and cpu packages are regular dependencies: they must load.
    expect(await resolveBackend('wasm')).toBe('wasm')
    const loaded = await loadBackend('cpu')
    expect(loaded.name).toBe('cpu')
    expect(loaded.gpu).toBeUndefined()
    const tf: TF = loaded.tf
    expect(tf.getBackend()).toBe('cpu')
    const t = tf.tensor1d([1, 2, 3])
    const s = tf.sum(t)
    expect(Array.from(await s.data())).toEqual([6])
    tf.dispose([t, s])
  })
})
