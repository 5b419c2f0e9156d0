import { execFileSync } from 'node:child_process'
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

/** A tiny real filesystem for full-disk tests: a tmpfs mounted as root; elsewhere `mounted` is false and says why. */
export interface Tmpfs {
  dir: string
  mounted: boolean
  /** Unmounts (lazily if something still holds a file) and removes the mount point. */
  remove: () => void
}

export function mountTmpfs (size: string, who: string): Tmpfs {
  const dir = mkdtempSync(join(tmpdir(), 'tm-tmpfs-'))
  let mounted = false
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir], { stdio: 'pipe' })
    mounted = true
  } catch (err) {
    console.warn(`${who}: skipping the full-filesystem tests: cannot mount a tmpfs at ${dir} (${String((err as { stderr?: Buffer }).stderr ?? err).trim()}); they need root`)
  }
  return {
    dir,
    mounted,
    remove: () => {
      if (mounted) {
        try {
          execFileSync('umount', [dir], { stdio: 'pipe' })
        } catch {
          execFileSync('umount', ['-l', dir]) // something still holds a file: detach it now, the kernel frees it after
        }
      }
      rmSync(dir, { recursive: true, force: true })
    }
  }
}

/** Fills the filesystem of `dir` to the last byte; returns the filler's path (remove it to free the space). */
export function fillFilesystem (dir: string): string {
  const path = join(dir, 'filler')
  const fd = openSync(path, 'a')
  try {
    for (const chunk of [Buffer.alloc(64 * 1024, 1), Buffer.alloc(4 * 1024, 1), Buffer.alloc(1, 1)]) {
      try {
        for (;;) writeSync(fd, chunk)
      } catch (err) {
        if ((err as { code?: string }).code !== 'ENOSPC') throw err
      }
    }
  } finally {
    closeSync(fd)
  }
  return path
}
