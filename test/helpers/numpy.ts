import { execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { readNpyFile } from '../../src/compute/npy.ts'
import type { HostTensor } from '../../src/compute/tensor.ts'

/**
 * numpy as the independent reference. `python` runs a snippet with `np`
 * imported and the folder bound to both `d` and `out` (extra argv after it)
 * and returns what it printed.
 */
export function python (code: string, dir: string, args: string[] = []): string {
  return execFileSync('python3', ['-c', `import sys, json\nimport numpy as np\nd = out = sys.argv[1]\n${code}`, dir, ...args], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, stdio: ['ignore', 'pipe', 'inherit'] })
}

/** Runs a snippet that writes .npy files into a fresh folder (or `out`) and returns the folder. */
export function numpy (code: string, out: string = mkdtempSync(join(tmpdir(), 'tm-np-'))): string {
  python(code, out)
  return out
}

export function tempDir (): { dir: string, cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'tensormesh-compute-'))
  return { dir, cleanup: () => { rmSync(dir, { recursive: true, force: true }) } }
}

export async function load (dir: string, name: string): Promise<HostTensor> {
  return await readNpyFile(join(dir, `${name}.npy`))
}

/** max |a - b| / max |b|: the relative error the issues state tolerances in (whole tensor). */
export function relError (a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity
  let num = 0
  let den = 0
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs((a[i] ?? 0) - (b[i] ?? 0)))
    den = Math.max(den, Math.abs(b[i] ?? 0))
  }
  return den === 0 ? num : num / den
}

/** Largest |got - want| (NaN anywhere counts as Infinity): the absolute bound the issues state for model outputs. */
export function maxAbsDiff (got: ArrayLike<number>, want: ArrayLike<number>): number {
  if (got.length !== want.length) throw new Error(`length ${got.length} != ${want.length}`)
  let worst = 0
  for (let i = 0; i < want.length; i++) {
    const d = Math.abs((got[i] as number) - (want[i] as number))
    if (!(d <= worst)) worst = Number.isNaN(d) ? Infinity : d
  }
  return worst
}

/** Largest |got - want| / max(|want|, floor) over all elements (element by element; NaN equals NaN). */
export function maxRelativeError (got: ArrayLike<number>, want: ArrayLike<number>, floor = 1): number {
  if (got.length !== want.length) throw new Error(`length ${got.length} != ${want.length}`)
  let worst = 0
  for (let i = 0; i < got.length; i++) {
    const w = want[i] as number
    const g = got[i] as number
    if (Number.isNaN(w) && Number.isNaN(g)) continue
    const e = Math.abs(g - w) / Math.max(Math.abs(w), floor)
    if (!(e <= worst)) worst = Number.isNaN(e) ? Infinity : e
  }
  return worst
}
