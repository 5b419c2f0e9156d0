/** Who may connect to a node and use its API: swarm key, allowlist, API token. */
export { SWARM_KEY_FILE, generateSwarmKey, loadOrCreateSwarmKey, parseSwarmKey, readSwarmKey, writeSwarmKey } from './swarm-key.ts'
export { AccessGate, parseAllowList, parsePeerId, readAllowFile } from './allowlist.ts'
export type { RefusalReason } from './allowlist.ts'
export { installPnetCipherFix, PNET_XOR_PIECE_BYTES } from './pnet-cipher.ts'
export { API_TOKEN_FILE, generateApiToken, loadOrCreateApiToken, provideApiToken, tokenMatches } from './api-token.ts'
