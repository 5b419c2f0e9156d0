/** Longest peer-supplied text we keep (an error reason, say). */
export const MAX_PEER_TEXT = 256

/**
 * Peer-supplied text as it may appear in a job record or a log: control
 * characters (terminal escapes among them) replaced, length capped.
 */
export function peerText (s: string): string {
  // eslint-disable-next-line no-control-regex
  const clean = s.replace(/[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g, '?')
  return clean.length > MAX_PEER_TEXT ? clean.slice(0, MAX_PEER_TEXT) + '…' : clean
}
