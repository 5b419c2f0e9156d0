/**
 * The compute layer's public surface: backend selection, the executor pool,
 * the operator registry and .npy files. Networking code imports from here.
 */
export { BACKEND_NAMES, BACKEND_CANDIDATES, GPU_PROBE_TIMEOUT_MS, detectGpu, isBackendName, loadBackend, parseBackendChoice, resolveBackend } from './backend.ts'
export type { Availability, BackendCandidate, BackendChoice, BackendName, GpuInfo, LoadedBackend } from './backend.ts'
export { ExecutorPool, CALIBRATION_BUDGET_MS, CALIBRATION_SIZE, DEFAULT_MAX_QUEUE, WORKER_START_TIMEOUT_MS } from './pool.ts'
export type { ExecutorPoolInit, PoolLoad, RunOptions, RunResult } from './pool.ts'
export { AbortedError, BackendInitError, BackendUnavailableError, MapFailedError, PoolNotRunningError, QueueFullError, WorkerCrashedError } from './errors.ts'
export { DEFAULT_MAX_TENSOR_BYTES } from './limits.ts'
export { MAX_NPY_HEADER_BYTES, decodeNpy, encodeNpy, readNpyFile, writeNpyFile } from './npy.ts'
export type { NpyLimits } from './npy.ts'
export * from './operators/index.ts'
export { MAX_GRAPH_NODES, MAX_MODEL_HEADER_BYTES, MAX_MODEL_IO_RANK, MAX_MODEL_LAYERS, MAX_MODEL_WEIGHTS, MAX_MODEL_WEIGHT_BYTES, MAX_WEIGHT_FILES, MODEL_FORMATS, MODEL_MAGIC, QUANTIZED_BYTES, SUPPORTED_GRAPH_OPS, SUPPORTED_LAYERS, WEIGHTS_FILE, describeModel, describePackedModel, modelFormat, modelSignature, packModel, parameterCount, readModelDir, storedBytes, unpackModel, viewPackedModel, writeModelDir } from './model.ts'
export type { ModelArtifacts, ModelArtifactsInput, ModelFormat, ModelInfo, ModelSignature, PackedModelView, SignatureOptions, WeightQuantization, WeightSpec } from './model.ts'
export * from './tensor.ts'
