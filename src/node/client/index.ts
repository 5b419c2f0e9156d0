/**
 * The typed HTTP client that the CLI and users share:
 * `import { connect } from 'tensormesh/client'`.
 */
export { ApiClient, ApiError, DEFAULT_DATA_DIR, TOKEN_FILE, resolveToken } from './api-client.ts'
export type { ConnectOptions } from './api-client.ts'
export { MeshClient, RemoteJob, connect } from './mesh-client.ts'
export type { SubmitSpec, Tensor } from './mesh-client.ts'
export type { JobView, ShardRecord, BidRecord } from '../jobs/job.ts'
export type { PeerView } from '../api/server.ts'
export type { NodeInfo } from '../mesh-node.ts'
