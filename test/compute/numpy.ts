import { execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

/**
 * numpy as the independent reference: tests run a snippet with `np` imported
 * and `d` bound to a temp dir, and read what it wrote or printed.
 */
export function numpy (code: string, dir: string, args: string[] = []): string {
  return execFileSync('python3', ['-c', `import sys, json\nimport numpy as np\nd = sys.argv[1]\n${code}`, dir, ...args], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 })
}

export function tempDir (): { dir: string, cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'tensormesh-compute-'))
  return { dir, cleanup: () => { rmSync(dir, { recursive: true, force: true }) } }
}

/** Largest |got - want| / max(|want|, floor) over all elements. */
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
