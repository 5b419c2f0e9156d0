import { prng } from './shards.ts'
import type { LayersModel } from '@tensorflow/tfjs-layers'
import type { ModelArtifactsInput } from '../../src/compute/model.ts'
import type { TF } from '../../src/compute/operators/types.ts'

/**
 * TF.js Layers in the test process (tests may load TF.js on their own main
 * thread; the daemon's rule is about its event loop). Models get seeded
 * weights so every run builds the same model.
 */
export type Layers = typeof import('@tensorflow/tfjs-layers')

export async function loadLayers (): Promise<Layers> {
  return await import('@tensorflow/tfjs-layers')
}

/** Replaces every weight with seeded uniform values in [-scale, scale]. */
export function seedWeights (tf: TF, model: LayersModel, seed: number, scale = 0.5): void {
  const u = prng(seed)
  // Variances (batch norm's moving_variance) must stay positive.
  const values = model.weights.map((w) => {
    // Weights have fully known shapes.
    const shape = w.shape as number[]
    const n = shape.reduce((a, b) => a * b, 1)
    return tf.tensor(Float32Array.from({ length: n }, () => w.name.includes('variance') ? 0.5 + u() : (2 * u() - 1) * scale), shape, 'float32')
  })
  model.setWeights(values)
  for (const v of values) v.dispose()
}

/** The model's artifacts as model.save() hands them to a save handler. */
export async function artifactsOf (tf: TF, model: LayersModel): Promise<ModelArtifactsInput> {
  let out: ModelArtifactsInput | undefined
  await model.save(tf.io.withSaveHandler(async (a) => {
    out = a as unknown as ModelArtifactsInput
    return { modelArtifactsInfo: { dateSaved: new Date(), modelTopologyType: 'JSON' } }
  }))
  if (out === undefined) throw new Error('model.save gave no artifacts')
  return out
}
