/**
 * The typed HTTP client that the CLI and users share:
 * `import { connect } from 'tensormesh/client'`.
 */
export { ApiClient, ApiError } from './api-client.ts'
export { DEFAULT_DATA_DIR, MeshClient, RemoteJob, TOKEN_FILE, connect, resolveToken } from './mesh-client.ts'
export type { ConnectOptions, SubmitSpec, Tensor } from './mesh-client.ts'
export type { JobView, ShardRecord, BidRecord } from '../jobs/job.ts'
export type { PeerView } from '../api.ts'
export type { NodeInfo } from '../mesh-node.ts'
