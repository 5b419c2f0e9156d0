/**
 * The largest tensor (in bytes of its data) that the compute layer accepts
 * from a file, a peer or an operator's output: 1 GiB.
 *
 * Why 1 GiB: a job holds its inputs, a copy per in-flight shard and the
 * reduced output at once, and a peer runs one shard per core; at 1 GiB per
 * tensor that stays within the few GiB of a commodity machine. It is also
 * the point where TF.js's wasm backend (32-bit wasm memory, 4 GiB at most)
 * could no longer hold an input, its output and temporaries together. Larger
 * work is split into several jobs.
 */
export const DEFAULT_MAX_TENSOR_BYTES = 1024 * 1024 * 1024
