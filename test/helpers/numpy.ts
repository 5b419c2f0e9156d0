import { execFileSync } from 'node:child_process'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { readNpyFile } from '../../src/compute/npy.ts'
import type { HostTensor } from '../../src/compute/tensor.ts'

/** Runs a python3 + numpy snippet; `out` is a fresh folder it may write .npy files into. */
export function numpy (code: string, out: string = mkdtempSync(join(tmpdir(), 'tm-np-'))): string {
  execFileSync('python3', ['-c', `import numpy as np, sys\nout = sys.argv[1]\n${code}`, out], { stdio: ['ignore', 'pipe', 'inherit'] })
  return out
}

export async function load (dir: string, name: string): Promise<HostTensor> {
  return await readNpyFile(join(dir, `${name}.npy`))
}

/** max |a - b| / max |b|: the relative error the issues state tolerances in. */
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
