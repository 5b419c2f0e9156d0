/** The `code` of what `fn` throws, or undefined when it does not throw. */
export function codeOf (fn: () => unknown): string | undefined {
  try {
    fn()
  } catch (err) {
    return (err as { code?: string }).code
  }
  return undefined
}

/** The `code` a promise rejects with, or undefined when it resolves. */
export async function asyncCodeOf (p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p
  } catch (err) {
    return (err as { code?: string }).code
  }
  return undefined
}
