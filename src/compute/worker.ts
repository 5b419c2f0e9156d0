/**
 * Entry module of an executor worker thread (see pool.ts). Kept to one call
 * so tests can start a worker with extra operators through serveWorker.
 */
import { serveWorker } from './executor.ts'

serveWorker()
