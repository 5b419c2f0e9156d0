import { decodeNpy, encodeNpy } from '../../compute/npy.ts'
import { hostTensor } from '../../compute/tensor.ts'
import { packModel, readModelDir, unpackModel, writeModelDir } from '../../compute/model.ts'
import { ApiClient, ApiError, resolveToken } from './api-client.ts'
import type { ConnectOptions } from './api-client.ts'
import type { HostTensor } from '../../compute/tensor.ts'
import type { PeerView } from '../api/server.ts'
import type { JobView, ScheduleSpec, VerifySpec } from '../jobs/job.ts'
import type { NodeInfo } from '../mesh-node.ts'

/** A tensor as the client takes and returns it: C-order data, float32 or int32. */
export interface Tensor {
  dtype: 'float32' | 'int32'
  shape: number[]
  data: Float32Array | Int32Array
}

export interface SubmitSpec {
  op: string
  inputs?: Record<string, Tensor>
  params?: Record<string, unknown>
  verify?: VerifySpec
  schedule?: ScheduleSpec
  /**
   * A TF.js model for `infer` (or a starting model): a model.json path
   * (packed here with its weight files), or a CID the mesh already holds.
   */
  model?: string
}

/** A job on a node, seen from outside: its record, its progress, its result. */
export class RemoteJob {
  readonly id: string
  private readonly api: ApiClient

  constructor (api: ApiClient, id: string) {
    this.api = api
    this.id = id
  }

  private get path (): string {
    return `/v1/jobs/${encodeURIComponent(this.id)}`
  }

  /** The job's record now (GET /v1/jobs/:id). */
  async view (): Promise<JobView> {
    return await this.api.json<JobView>('GET', this.path)
  }

  /** Every change of the job's record, from the node's event stream, until it finishes. */
  async * updates (signal?: AbortSignal): AsyncGenerator<JobView> {
    const res = await this.api.request('GET', `${this.path}/events`, undefined, undefined, signal)
    if (res.body === null) throw new ApiError(0, 'ERR_HTTP', 'event stream has no body')
    const decoder = new TextDecoder()
    let buffer = ''
    for await (const chunk of res.body) {
      buffer += decoder.decode(chunk, { stream: true })
      let end: number
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const event = buffer.slice(0, end)
        buffer = buffer.slice(end + 2)
        const data = event.split('\n').filter(l => l.startsWith('data: ')).map(l => l.slice(6)).join('\n')
        if (data !== '') yield JSON.parse(data) as JobView
      }
    }
  }

  /** Follows the job to its end; `onUpdate` sees each record. Resolves with the final record. */
  async wait (onUpdate?: (job: JobView) => void, signal?: AbortSignal): Promise<JobView> {
    let last: JobView | undefined
    for await (const view of this.updates(signal)) {
      last = view
      onUpdate?.(view)
    }
    // The stream ends when the job does; read the final record to be sure.
    return last?.finishedAt !== undefined ? last : await this.view()
  }

  /** Waits for the job and returns its output tensor; rejects with the job's error code when it did not succeed. */
  async result (): Promise<HostTensor> {
    await this.settled()
    const res = await this.api.request('GET', `${this.path}/result`)
    return decodeNpy(new Uint8Array(await res.arrayBuffer()), 'result')
  }

  /** The result as the node's `.npy` bytes (what `submit --out` writes). */
  async resultBytes (): Promise<Uint8Array> {
    await this.settled()
    return new Uint8Array(await (await this.api.request('GET', `${this.path}/result`)).arrayBuffer())
  }

  /** A training job's model, written as TF.js writes one (model.json + weights.bin); returns model.json's path. */
  async saveModel (dir: string): Promise<string> {
    await this.settled()
    const res = await this.api.request('GET', `${this.path}/model`)
    return await writeModelDir(dir, unpackModel(new Uint8Array(await res.arrayBuffer())))
  }

  async cancel (): Promise<JobView> {
    return await this.api.json<JobView>('DELETE', this.path)
  }

  private async settled (): Promise<JobView> {
    const job = await this.wait()
    if (job.state !== 'succeeded') {
      throw new ApiError(0, job.error?.code ?? 'ERR_JOB_NOT_SUCCEEDED', job.error?.message ?? `job ${job.id} ended ${job.state}`)
    }
    return job
  }
}

/** A typed client for one node's HTTP API: `connect(url)`. */
export class MeshClient {
  readonly api: ApiClient

  constructor (url: string, options: ConnectOptions = {}) {
    this.api = new ApiClient(url, resolveToken(options))
  }

  get url (): string {
    return this.api.base
  }

  async node (): Promise<NodeInfo> {
    return await this.api.node()
  }

  async peers (): Promise<PeerView[]> {
    return await this.api.peers()
  }

  async jobs (): Promise<JobView[]> {
    return await this.api.json<JobView[]>('GET', '/v1/jobs')
  }

  job (id: string): RemoteJob {
    return new RemoteJob(this.api, id)
  }

  /** Submits a job; its inputs travel as `.npy` parts. Resolves once the node accepted it. */
  async submit (spec: SubmitSpec): Promise<RemoteJob> {
    const form = new FormData()
    const body: Record<string, unknown> = { op: spec.op, params: spec.params ?? {} }
    if (spec.verify !== undefined) body.verify = spec.verify
    if (spec.schedule !== undefined) body.schedule = spec.schedule
    if (spec.model !== undefined) {
      if (/^baf[a-z2-7]+$/.test(spec.model)) body.blobs = { model: { cid: spec.model } }
      else form.set('blob.model', new Blob([packModel(await readModelDir(spec.model)) as Uint8Array<ArrayBuffer>]), 'model.tmmodel')
    }
    form.set('spec', JSON.stringify(body))
    for (const [name, t] of Object.entries(spec.inputs ?? {})) {
      // hostTensor checks the shape against the data before anything is sent.
      const bytes = encodeNpy(hostTensor(t.dtype, t.shape, t.data))
      form.set(name, new Blob([bytes as Uint8Array<ArrayBuffer>]), `${name}.npy`)
    }
    return await this.submitForm(form)
  }

  /** Submits a ready multipart body (a `spec` part and one `.npy` part per input). */
  async submitForm (form: FormData): Promise<RemoteJob> {
    const res = await this.api.request('POST', '/v1/jobs', form)
    const view = await res.json() as JobView
    return new RemoteJob(this.api, view.id)
  }
}

/** A client for the node whose API is at `url` (e.g. http://127.0.0.1:7070). */
export function connect (url: string, options: ConnectOptions = {}): MeshClient {
  return new MeshClient(url, options)
}
