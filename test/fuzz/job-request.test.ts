/**
 * readJobRequest, the decoder of POST /v1/jobs, fed fake IncomingMessage
 * streams: JSON bodies and multipart/form-data bodies (serialized by the
 * platform's own FormData, so the boundary and part headers are real),
 * chunked anywhere, then mutated. Whatever arrives becomes a job spec whose
 * tensors are consistent, or a typed error.
 */
import { Readable } from 'node:stream'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { NotFoundError } from '../../src/errors.ts'
import { encodeNpy } from '../../src/compute/npy.ts'
import { MAX_JSON_BODY_BYTES, readJobRequest } from '../../src/node/api/job-request.ts'
import { fuzzParams, fuzzTimeout, mutate, mutationArb, typedAsync, utf8String } from '../helpers/fuzz.ts'
import { identifier } from './arbitraries.ts'
import type { HostTensor } from '../../src/compute/tensor.ts'
import type { JobSpec } from '../../src/node/jobs/job.ts'
import type { IncomingMessage } from 'node:http'

/** The node's tensor limit in these runs: small, so .npy parts over it are cheap to make. */
const MAX_TENSOR_BYTES = 4096

/** A request as the HTTP server hands it over: headers, and the body in chunks. */
function request (body: Uint8Array, headers: Record<string, string>, cuts: number[] = []): IncomingMessage {
  const at = [...new Set(cuts.map(c => Math.floor(c * body.byteLength)))].filter(p => p > 0 && p < body.byteLength).sort((a, b) => a - b)
  const chunks: Buffer[] = []
  let prev = 0
  for (const p of [...at, body.byteLength]) { if (p > prev) chunks.push(Buffer.from(body.subarray(prev, p))); prev = p }
  return Object.assign(Readable.from(chunks), { headers }) as unknown as IncomingMessage
}

/** Blobs by CID: a CID names its bytes; one that starts with "missing" is found nowhere. */
async function resolveBlob (cid: string): Promise<Uint8Array> {
  if (cid.startsWith('missing')) throw new NotFoundError(`no blob ${cid.slice(0, 64)}`, 'ERR_BLOB_NOT_FOUND')
  return new TextEncoder().encode(`blob:${cid}`)
}

/** Any number JSON can carry, with the edges of int32 and float32 among them. */
const jsonNumber = fc.oneof(
  { arbitrary: fc.integer({ min: -1000, max: 1000 }), weight: 4 },
  { arbitrary: fc.integer(), weight: 2 },
  { arbitrary: fc.float({ noNaN: true, noDefaultInfinity: true }), weight: 2 },
  { arbitrary: fc.constantFrom(2 ** 31 - 1, -(2 ** 31), 2 ** 31, 2 ** 32 + 5, 0.5, -1.5, 3.4028234663852886e38, 1e39, -1e39, 2 ** 53), weight: 1 }
)

interface InlineInput { dtype: 'float32' | 'int32', shape: number[], data: number[] }

const inlineInput: fc.Arbitrary<InlineInput> = fc.record({
  dtype: fc.constantFrom('float32' as const, 'int32' as const),
  shape: fc.array(fc.integer({ min: 0, max: 4 }), { maxLength: 3 })
}).chain(({ dtype, shape }) => {
  const n = shape.reduce((a, b) => a * b, 1)
  return fc.array(jsonNumber, { minLength: n, maxLength: n }).map(data => ({ dtype, shape, data }))
})

const params = fc.dictionary(fc.string({ maxLength: 8 }), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 4 })

/** A JSON job spec, with its inputs and blob refs as separate lists (names may repeat: the last wins in JSON). */
const jsonSpec: fc.Arbitrary<JsonSpec> = fc.record({
  op: utf8String(32),
  params,
  inputs: fc.uniqueArray(fc.tuple(identifier, inlineInput), { selector: ([n]) => n, maxLength: 4 }),
  blobs: fc.uniqueArray(fc.tuple(identifier, fc.oneof(utf8String(40), fc.constant('missing-1'))), { selector: ([n]) => n, maxLength: 2 })
})

interface JsonSpec { op: string, params: Record<string, unknown>, inputs: Array<[string, InlineInput]>, blobs: Array<[string, string]> }

function jsonBody (s: JsonSpec): Uint8Array {
  // Object.fromEntries defines own keys, __proto__ included, as JSON.parse will.
  const value: Record<string, unknown> = { op: s.op, params: s.params, inputs: Object.fromEntries(s.inputs) }
  if (s.blobs.length > 0) value.blobs = Object.fromEntries(s.blobs.map(([n, cid]) => [n, { cid }]))
  return new TextEncoder().encode(JSON.stringify(value))
}

/** A tensor's values as the spec must carry them, or why it must be refused. */
function expectedData (t: InlineInput): number[] | 'refused' {
  // The numbers as JSON carries them (-0 arrives as 0).
  const data = JSON.parse(JSON.stringify(t.data)) as number[]
  if (t.dtype === 'int32') return data.every(x => Number.isInteger(x) && x >= -(2 ** 31) && x <= 2 ** 31 - 1) ? data : 'refused'
  const f = data.map(Math.fround)
  return f.every(Number.isFinite) ? f : 'refused'
}

/** Own keys only: a name that reached a map through its prototype is a bug, not an input. */
function own<T> (map: Record<string, T> | undefined): Array<[string, T]> {
  if (map === undefined) return []
  expect(Object.getPrototypeOf(map)).toBe(Object.prototype)
  return Object.keys(map).map(k => [k, Object.getOwnPropertyDescriptor(map, k)?.value as T])
}

function checkSpec (spec: JobSpec, bodyBytes: number): void {
  expect(typeof spec.op).toBe('string')
  expect(spec.params !== null && typeof spec.params === 'object' && !Array.isArray(spec.params)).toBe(true)
  for (const [name, t] of own(spec.inputs)) {
    expect(name).toMatch(/^[A-Za-z_][A-Za-z0-9_]{0,63}$/)
    expect(['float32', 'int32']).toContain(t.dtype)
    expect(t.data.length).toBe(t.shape.reduce((a, b) => a * b, 1))
    // Bounded by what was sent: .npy parts by the tensor limit, inline ones by the JSON body.
    expect(t.data.byteLength).toBeLessThanOrEqual(Math.max(MAX_TENSOR_BYTES, 2 * bodyBytes))
  }
  for (const [name] of own(spec.blobs)) expect(name).toMatch(/^[A-Za-z_][A-Za-z0-9_]{0,63}$/)
}

const TYPED_NAMES = ['InvalidInputError', 'LimitExceededError', 'NotFoundError']

/** A multipart job: the spec part, one .npy part per input, and blob.NAME parts; serialized by FormData. */
const multipartJob = fc.record({
  op: utf8String(32),
  params,
  inputs: fc.uniqueArray(fc.tuple(identifier, fc.record({
    dtype: fc.constantFrom('float32' as const, 'int32' as const),
    shape: fc.array(fc.integer({ min: 0, max: 6 }), { maxLength: 3 })
  }).chain(({ dtype, shape }) => {
    const n = shape.reduce((a, b) => a * b, 1)
    return (dtype === 'float32' ? fc.float32Array({ minLength: n, maxLength: n }) : fc.int32Array({ minLength: n, maxLength: n }))
      .map((data): HostTensor => ({ dtype, shape, data }))
  })), { selector: ([n]) => n, maxLength: 3 }),
  blobs: fc.uniqueArray(fc.tuple(identifier, fc.uint8Array({ maxLength: 64 })), { selector: ([n]) => n, maxLength: 2 })
})

async function multipartBody (j: { op: string, params: Record<string, unknown>, inputs: Array<[string, HostTensor]>, blobs: Array<[string, Uint8Array]> }): Promise<{ body: Uint8Array, type: string }> {
  const form = new FormData()
  form.append('spec', JSON.stringify({ op: j.op, params: j.params }))
  for (const [name, t] of j.inputs) form.append(name, new Blob([encodeNpy(t)]), `${name}.npy`)
  for (const [name, bytes] of j.blobs) form.append(`blob.${name}`, new Blob([bytes]), name)
  const res = new Response(form)
  return { body: new Uint8Array(await res.arrayBuffer()), type: res.headers.get('content-type') ?? '' }
}

const cutsArb = fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 4 })

describe('readJobRequest (fuzz)', () => {
  it('reads a JSON job back to its op, params, inputs and blobs, however the body is chunked', async () => {
    await fc.assert(fc.asyncProperty(jsonSpec, cutsArb, async (s, cuts) => {
      const body = jsonBody(s)
      const out = await typedAsync(readJobRequest(request(body, { 'content-type': 'application/json', 'content-length': String(body.byteLength) }, cuts), MAX_TENSOR_BYTES, resolveBlob))
      const wantData = s.inputs.map(([, t]) => expectedData(t))
      const reserved = [...s.inputs, ...s.blobs].some(([n]) => n === '__proto__')
      if (reserved || wantData.includes('refused') || s.blobs.some(([, cid]) => cid.startsWith('missing'))) {
        expect(out.ok ? 'accepted' : (out.error as { code?: string }).code).toMatch(/^ERR_(BAD_SPEC|BAD_SHAPE|BLOB_NOT_FOUND)$/)
        return
      }
      if (!out.ok) throw out.error
      const spec = out.value
      checkSpec(spec, body.byteLength)
      expect(spec.op).toBe(s.op)
      expect(spec.params).toEqual(JSON.parse(JSON.stringify(s.params)))
      expect(own(spec.inputs).map(([n, t]) => [n, t.dtype, t.shape, Array.from(t.data)]))
        .toEqual(s.inputs.map(([n, t], i) => [n, t.dtype, t.shape, wantData[i]]))
      expect(own(spec.blobs).map(([n, b]) => [n, new TextDecoder().decode(b)])).toEqual(s.blobs.map(([n, cid]) => [n, `blob:${cid}`]))
    }), fuzzParams())
  }, fuzzTimeout())

  it('reads a multipart job back to its spec, .npy inputs and blob parts', async () => {
    await fc.assert(fc.asyncProperty(multipartJob, cutsArb, async (j, cuts) => {
      const { body, type } = await multipartBody(j)
      const out = await typedAsync(readJobRequest(request(body, { 'content-type': type }, cuts), MAX_TENSOR_BYTES, resolveBlob))
      if ([...j.inputs, ...j.blobs].some(([n]) => n === '__proto__')) {
        expect(out.ok ? 'accepted' : (out.error as { code?: string }).code).toBe('ERR_BAD_SPEC')
        return
      }
      if (!out.ok) throw out.error
      const spec = out.value
      checkSpec(spec, body.byteLength)
      expect(spec.op).toBe(j.op)
      expect(spec.params).toEqual(JSON.parse(JSON.stringify(j.params)))
      expect(own(spec.inputs).map(([n, t]) => [n, t.dtype, t.shape, Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength).toString('hex')]))
        .toEqual(j.inputs.map(([n, t]) => [n, t.dtype, t.shape, Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength).toString('hex')]))
      expect(own(spec.blobs).map(([n, b]) => [n, Buffer.from(b).toString('hex')])).toEqual(j.blobs.map(([n, b]) => [n, Buffer.from(b).toString('hex')]))
    }), fuzzParams())
  }, fuzzTimeout())

  it('answers arbitrary and mutated bodies and headers with a typed error, or a consistent spec', async () => {
    const bodies = fc.oneof(
      jsonSpec.map(s => ({ body: jsonBody(s), type: 'application/json' })),
      // Multipart bodies are made in the property (FormData serializes asynchronously).
      multipartJob.map(j => ({ job: j }))
    )
    // Header values as Node's parser delivers them: visible ASCII, space, tab and obs-text (latin1).
    const headerText = fc.string({ unit: fc.integer({ min: 0x09, max: 0xff }).filter(c => c === 0x09 || (c >= 0x20 && c !== 0x7f)).map(c => String.fromCharCode(c)), maxLength: 40 })
    const headerMutation = fc.record({
      type: fc.oneof(
        { arbitrary: fc.constant(undefined), weight: 6 },
        { arbitrary: fc.tuple(fc.constantFrom('', 'application/json', 'APPLICATION/JSON', 'multipart/form-data', 'multipart/form-data; boundary=', 'text/plain'), headerText).map(([a, b]) => a + b), weight: 2 }
      ),
      length: fc.oneof({ arbitrary: fc.constant(undefined), weight: 6 }, { arbitrary: fc.oneof(fc.nat(), fc.constantFrom('-1', 'abc', '1e400', String(MAX_JSON_BODY_BYTES + 1))).map(String), weight: 1 })
    })
    // Damage drawn before the body exists (FormData serializes asynchronously), applied to it after.
    const damage = fc.oneof(
      { arbitrary: fc.uint8Array({ maxLength: 512 }).map(random => ({ random })), weight: 1 },
      { arbitrary: fc.array(mutationArb, { minLength: 1, maxLength: 4 }).map(mutations => ({ mutations })), weight: 3 }
    )
    await fc.assert(fc.asyncProperty(bodies, damage, headerMutation, cutsArb, async (b, d, h, cuts) => {
      const { body, type } = 'job' in b ? await multipartBody(b.job) : b
      const mutatedBody = 'random' in d ? d.random : d.mutations.reduce(mutate, body)
      const headers: Record<string, string> = { 'content-type': h.type ?? type }
      if (h.length !== undefined) headers['content-length'] = h.length
      const out = await typedAsync(readJobRequest(request(mutatedBody, headers, cuts), MAX_TENSOR_BYTES, resolveBlob))
      if (out.ok) checkSpec(out.value, mutatedBody.byteLength)
      else expect(TYPED_NAMES).toContain(out.error.name)
    }), fuzzParams())
  }, fuzzTimeout())

  it('refuses a body over the limit, declared or not, without reading it all', async () => {
    const MiB = new Uint8Array(1024 * 1024).fill(0x20)
    await fc.assert(fc.asyncProperty(fc.boolean(), fc.boolean(), async (declare, json) => {
      const limit = MAX_JSON_BODY_BYTES
      const chunks = Array.from({ length: limit / MiB.byteLength + 1 }, () => Buffer.from(MiB.buffer))
      const headers: Record<string, string> = { 'content-type': json ? 'application/json' : 'multipart/form-data; boundary=x' }
      if (declare) headers['content-length'] = String(json ? limit + 1 : 2 * 1024 ** 3)
      const req = Object.assign(Readable.from(declare || json ? chunks : [MiB]), { headers }) as unknown as IncomingMessage
      const out = await typedAsync(readJobRequest(req, MAX_TENSOR_BYTES, resolveBlob))
      const want = declare || json ? 'ERR_LIMIT_EXCEEDED' : 'ERR_BAD_SPEC'
      expect(out.ok ? 'accepted' : (out.error as { code?: string }).code).toBe(want)
    }), fuzzParams(0.004))
  }, fuzzTimeout())
})
