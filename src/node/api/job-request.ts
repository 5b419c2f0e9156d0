import { Readable } from 'node:stream'
import { InvalidInputError, LimitExceededError, errorMessage } from '../../errors.ts'
import { decodeNpy } from '../../compute/npy.ts'
import { hostTensor, isDType } from '../../compute/tensor.ts'
import { packImages } from '../../compute/images.ts'
import type { NamedImage } from '../../compute/images.ts'
import type { JobSpec } from '../jobs/job.ts'
import type { Tensors, Params } from '../../compute/operators/types.ts'
import type { IncomingMessage } from 'node:http'

/**
 * Largest POST /v1/jobs body. Inputs arrive whole before validation (a job's
 * shapes must all be known to check it), so this bounds the memory one
 * request can take: one 1 GiB tensor or several smaller ones.
 */
export const MAX_JOB_BODY_BYTES = 1024 * 1024 * 1024 + 1024 * 1024

/** Inline JSON inputs are for small tensors; larger ones go as .npy parts. */
export const MAX_JSON_BODY_BYTES = 16 * 1024 * 1024

/** Input names: what an operator's inputs are called (a, b, x ...). */
const INPUT_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,63}$/

/**
 * An input or blob name. `__proto__` matches INPUT_NAME, but assigning it
 * to a map (`inputs[name] = t`) sets the map's prototype instead of adding
 * a key, so the input would silently vanish.
 */
function isInputName (name: string): boolean {
  return INPUT_NAME.test(name) && name !== '__proto__'
}

const INT32_MIN = -(2 ** 31)
const INT32_MAX = 2 ** 31 - 1

function checkEnvelope (value: unknown): { op: unknown, params: Params } {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new InvalidInputError('job spec must be a JSON object {"op", "params", "inputs"}', 'ERR_BAD_SPEC')
  const v = value as Record<string, unknown>
  const params = v.params ?? {}
  if (params === null || typeof params !== 'object' || Array.isArray(params)) throw new InvalidInputError('job spec "params" must be a JSON object', 'ERR_BAD_SPEC')
  if (typeof v.op !== 'string') throw new InvalidInputError('job spec "op" must be an operator name (a string)', 'ERR_BAD_SPEC')
  return { op: v.op, params: params as Params }
}

function inlineTensor (name: string, value: unknown): Tensors[string] {
  if (value === null || typeof value !== 'object') throw new InvalidInputError(`input ${name} must be {"dtype", "shape", "data"}`, 'ERR_BAD_SPEC')
  const v = value as Record<string, unknown>
  const dtype = v.dtype ?? 'float32'
  if (!isDType(dtype)) throw new InvalidInputError(`input ${name}: dtype must be float32 or int32`, 'ERR_BAD_SPEC')
  if (!Array.isArray(v.shape) || !v.shape.every(d => Number.isSafeInteger(d) && d >= 0)) throw new InvalidInputError(`input ${name}: shape must be an array of non-negative integers`, 'ERR_BAD_SPEC')
  if (!Array.isArray(v.data) || !v.data.every(x => typeof x === 'number')) throw new InvalidInputError(`input ${name}: data must be a flat array of numbers in C order`, 'ERR_BAD_SPEC')
  const data = dtype === 'float32' ? Float32Array.from(v.data as number[]) : Int32Array.from(v.data as number[])
  // The typed arrays would silently wrap 2^31 to -2^31, truncate 1.5 to 1 and
  // turn 1e39 into Infinity; refuse instead, as decodeNpy does for .npy parts.
  if (dtype === 'int32' && !(v.data as number[]).every(x => Number.isInteger(x) && x >= INT32_MIN && x <= INT32_MAX)) {
    throw new InvalidInputError(`input ${name}: int32 data must be integers from ${INT32_MIN} to ${INT32_MAX}`, 'ERR_BAD_SPEC')
  }
  if (dtype === 'float32' && !(data as Float32Array).every(Number.isFinite)) {
    throw new InvalidInputError(`input ${name}: float32 data must be finite numbers within float32's range (about ±3.4e38)`, 'ERR_BAD_SPEC')
  }
  try {
    return hostTensor(dtype, v.shape as number[], data)
  } catch (err) {
    throw new InvalidInputError(`input ${name}: ${errorMessage(err)}`, 'ERR_BAD_SHAPE')
  }
}

/**
 * Reads a POST /v1/jobs body into a job spec. Two forms:
 * - multipart/form-data: a part "spec" with JSON {op, params} and one part
 *   per input, named after it, holding a .npy file;
 * - application/json: {op, params, inputs: {NAME: {dtype, shape, data}}} for small inputs.
 */
/** Finds a blob by CID for a job that names one (this node's store, else its peers). */
export type BlobResolver = (cid: string) => Promise<Uint8Array>

/** A job input named instead of sent: an earlier job's result, or a stored .npy by CID. */
export type InputRef = { job: string } | { cid: string }

/** Turns an input reference into its tensor (a pipeline's earlier step, a stored blob). */
export type InputResolver = (name: string, ref: InputRef) => Promise<Tensors[string]>

const NO_REFS: InputResolver = async (name) => {
  throw new InvalidInputError(`input ${name}: this endpoint takes no input references`, 'ERR_BAD_SPEC')
}

/** An input given as {"job": ID} or {"cid": CID}; undefined when it is a tensor. */
function inputRef (name: string, value: unknown): InputRef | undefined {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return undefined
  const v = value as Record<string, unknown>
  if (!('job' in v) && !('cid' in v)) return undefined
  const keys = Object.keys(v)
  if (keys.length !== 1) throw new InvalidInputError(`input ${name}: a reference is {"job": ID} or {"cid": CID}, nothing else (got ${keys.slice(0, 4).join(', ')})`, 'ERR_BAD_SPEC')
  if (typeof v.job === 'string' && v.job.length > 0 && v.job.length <= 64) return { job: v.job }
  if (typeof v.cid === 'string' && v.cid.length > 0 && v.cid.length <= 128) return { cid: v.cid }
  throw new InvalidInputError(`input ${name}: {"job"} takes a job id and {"cid"} a CID, as strings`, 'ERR_BAD_SPEC')
}

/** A spec's input references (multipart: in the spec part's "inputs"), resolved. */
async function resolveRefs (value: unknown, resolveInput: InputResolver, inputs: Tensors): Promise<void> {
  if (value === undefined) return
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new InvalidInputError('job spec "inputs" must be an object of named inputs', 'ERR_BAD_SPEC')
  for (const [name, v] of Object.entries(value)) {
    if (!isInputName(name)) throw new InvalidInputError(`input name "${name.slice(0, 64)}" is not an identifier`, 'ERR_BAD_SPEC')
    const ref = inputRef(name, v)
    if (ref === undefined) throw new InvalidInputError(`input ${name}: the spec part names inputs only as {"job": ID} or {"cid": CID}; tensors go as .npy parts`, 'ERR_BAD_SPEC')
    inputs[name] = await resolveInput(name, ref)
  }
}

/** The optional parts of a spec besides op, params and inputs. */
function extras (value: Record<string, unknown>): Pick<JobSpec, 'verify' | 'schedule'> {
  const out: Pick<JobSpec, 'verify' | 'schedule'> = {}
  if (value.verify !== undefined) out.verify = value.verify as JobSpec['verify']
  if (value.schedule !== undefined) out.schedule = value.schedule as JobSpec['schedule']
  return out
}

async function blobRefs (value: unknown, resolve: BlobResolver, blobs: Record<string, Uint8Array>): Promise<void> {
  if (value === undefined) return
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new InvalidInputError('job spec "blobs" must map names to {"cid": CID}', 'ERR_BAD_SPEC')
  for (const [name, ref] of Object.entries(value)) {
    const cid = (ref as { cid?: unknown } | null)?.cid
    if (!isInputName(name) || typeof cid !== 'string') throw new InvalidInputError(`job spec blob "${name.slice(0, 64)}" must be {"cid": CID}`, 'ERR_BAD_SPEC')
    blobs[name] = await resolve(cid)
  }
}

export async function readJobRequest (req: IncomingMessage, maxTensorBytes: number, resolve: BlobResolver, resolveInput: InputResolver = NO_REFS): Promise<JobSpec> {
  const type = (req.headers['content-type'] ?? '').toLowerCase()
  const declared = Number(req.headers['content-length'] ?? NaN)
  const isJson = type.startsWith('application/json')
  const limit = isJson ? MAX_JSON_BODY_BYTES : MAX_JOB_BODY_BYTES
  if (declared > limit) throw new LimitExceededError(`request body of ${declared} bytes exceeds the ${limit}-byte limit`)
  if (!isJson && !type.startsWith('multipart/form-data')) {
    throw new InvalidInputError(`POST /v1/jobs takes multipart/form-data (a "spec" part and one .npy part per input) or application/json, not "${type.slice(0, 64)}"`, 'ERR_BAD_CONTENT_TYPE')
  }
  const body = boundedBody(req, limit)
  const response = new Response(body, { headers: { 'content-type': type } })
  if (isJson) {
    let value: unknown
    try {
      value = JSON.parse(await response.text())
    } catch (err) {
      if (err instanceof LimitExceededError) throw err
      throw new InvalidInputError(`job body is not valid JSON: ${errorMessage(err)}`, 'ERR_BAD_SPEC')
    }
    const { op, params } = checkEnvelope(value)
    const rawInputs = (value as { inputs?: unknown }).inputs ?? {}
    if (rawInputs === null || typeof rawInputs !== 'object' || Array.isArray(rawInputs)) throw new InvalidInputError('job spec "inputs" must be an object of named tensors', 'ERR_BAD_SPEC')
    const inputs: Tensors = {}
    for (const [name, t] of Object.entries(rawInputs)) {
      if (!isInputName(name)) throw new InvalidInputError(`input name "${name.slice(0, 64)}" is not an identifier`, 'ERR_BAD_SPEC')
      const ref = inputRef(name, t)
      inputs[name] = ref === undefined ? inlineTensor(name, t) : await resolveInput(name, ref)
    }
    const blobs: Record<string, Uint8Array> = {}
    await blobRefs((value as { blobs?: unknown }).blobs, resolve, blobs)
    return { op: op as string, params, inputs, ...extras(value as Record<string, unknown>), ...(Object.keys(blobs).length > 0 ? { blobs } : {}) }
  }
  let form: FormData
  try {
    form = await response.formData()
  } catch (err) {
    const cause = (err as { cause?: unknown }).cause
    if (cause instanceof LimitExceededError) throw cause
    throw new InvalidInputError(`job body is not valid multipart/form-data: ${errorMessage(err)}`, 'ERR_BAD_SPEC')
  }
  const specPart = form.get('spec')
  if (specPart === null) throw new InvalidInputError('multipart job has no "spec" part with {"op", "params"}', 'ERR_BAD_SPEC')
  let specValue: unknown
  try {
    specValue = JSON.parse(typeof specPart === 'string' ? specPart : await specPart.text())
  } catch (err) {
    throw new InvalidInputError(`job "spec" part is not valid JSON: ${errorMessage(err)}`, 'ERR_BAD_SPEC')
  }
  const { op, params } = checkEnvelope(specValue)
  const inputs: Tensors = {}
  const blobs: Record<string, Uint8Array> = {}
  await blobRefs((specValue as { blobs?: unknown }).blobs, resolve, blobs)
  await resolveRefs((specValue as { inputs?: unknown }).inputs, resolveInput, inputs)
  const images: NamedImage[] = []
  for (const [name, part] of form.entries()) {
    if (name === 'spec') continue
    // Parts named "image" are image files, in order; their file names name them in errors.
    if (name === 'image') {
      if (typeof part === 'string') throw new InvalidInputError('part image must be a file part (a JPEG or PNG), not a text field', 'ERR_BAD_SPEC')
      images.push({ name: part.name === '' ? `image ${images.length}` : part.name, bytes: new Uint8Array(await part.arrayBuffer()) })
      continue
    }
    // A part named blob.NAME carries opaque bytes (a packed model), not a tensor.
    const blob = /^blob\.(.+)$/.exec(name)?.[1]
    const key = blob ?? name
    if (!isInputName(key)) throw new InvalidInputError(`part name "${name.slice(0, 64)}" is not an identifier`, 'ERR_BAD_SPEC')
    if (typeof part === 'string') throw new InvalidInputError(`part ${name} must be a file part, not a text field`, 'ERR_BAD_SPEC')
    if (blob === undefined && Object.hasOwn(inputs, key)) throw new InvalidInputError(`input ${key} is both a part and a reference in the spec`, 'ERR_BAD_SPEC')
    if (blob !== undefined) blobs[key] = new Uint8Array(await part.arrayBuffer())
    else inputs[key] = decodeNpy(new Uint8Array(await part.arrayBuffer()), key, { maxTensorBytes })
  }
  if (images.length > 0) {
    if (Object.hasOwn(blobs, 'images')) throw new InvalidInputError('a job has image parts and a blob named images: one or the other', 'ERR_BAD_SPEC')
    blobs.images = packImages(images)
  }
  return { op: op as string, params, inputs, ...extras(specValue as Record<string, unknown>), ...(Object.keys(blobs).length > 0 ? { blobs } : {}) }
}

/** The request body as a web stream that errors once it passes `limit` bytes. */
function boundedBody (req: IncomingMessage, limit: number): ReadableStream<Uint8Array> {
  let seen = 0
  const counted = Readable.from((async function * () {
    for await (const chunk of req) {
      seen += (chunk as Buffer).byteLength
      if (seen > limit) throw new LimitExceededError(`request body exceeds the ${limit}-byte limit`)
      yield chunk as Buffer
    }
  })())
  return Readable.toWeb(counted) as ReadableStream<Uint8Array>
}
