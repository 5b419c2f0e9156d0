import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { loadBackend } from '../../src/compute/backend.ts'
import { decodeNpy } from '../../src/compute/npy.ts'
import { initMlp, mlpEval, mlpGrad, mlpParamCount } from '../../src/compute/operators/mlp.ts'
import { hostTensor } from '../../src/compute/tensor.ts'
import { codeOf } from '../helpers/codes.ts'
import { maxRelativeError, python, tempDir } from '../helpers/numpy.ts'
import { inProcess, runSharded } from './shards.ts'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import type { TF } from '../../src/compute/operators/types.ts'

const { dir, cleanup } = tempDir()
afterAll(cleanup)

let tf: TF
beforeAll(async () => { tf = (await loadBackend('wasm')).tf })

const layers = [7, 5, 3]
const rowsN = 41

/**
 * numpy's forward and backward pass of the same MLP (relu hidden, softmax
 * cross-entropy summed over rows), written by hand: an independent reference
 * for TF.js's autodiff.
 */
function reference (): { x: Float32Array, y: Int32Array, w: Float32Array, grad: Float32Array, evalOut: Float32Array } {
  const w = initMlp({ layers, activation: 'relu' }, 3)
  const x = Float32Array.from({ length: rowsN * layers[0]! }, (_, i) => Math.sin(i * 1.7) * 2)
  const y = Int32Array.from({ length: rowsN }, (_, i) => (i * 7) % 3)
  const write = (name: string, data: Float32Array | Int32Array, shape: number[]): void => {
    python(`np.save(f'{d}/${name}.npy', np.array(json.loads(sys.argv[2]), dtype=np.${data instanceof Float32Array ? 'float32' : 'int32'}).reshape(${JSON.stringify(shape)}))`, dir, [JSON.stringify([...data])])
  }
  write('x', x, [rowsN, layers[0]!])
  write('y', y, [rowsN])
  write('w', w, [w.length])
  python(`
x = np.load(f'{d}/x.npy').astype(np.float64); y = np.load(f'{d}/y.npy'); w = np.load(f'{d}/w.npy').astype(np.float64)
a, h, c = ${layers.join(', ')}
o = 0
W0 = w[o:o + a * h].reshape(a, h); o += a * h
b0 = w[o:o + h]; o += h
W1 = w[o:o + h * c].reshape(h, c); o += h * c
b1 = w[o:o + c]
z1 = x @ W0 + b0; h1 = np.maximum(z1, 0); z2 = h1 @ W1 + b1
p = np.exp(z2 - z2.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
onehot = np.eye(c)[y]
loss = -(onehot * np.log(p)).sum()
d2 = p - onehot
dW1 = h1.T @ d2; db1 = d2.sum(0)
d1 = (d2 @ W1.T) * (z1 > 0)
dW0 = x.T @ d1; db0 = d1.sum(0)
np.save(f'{d}/grad.npy', np.concatenate([dW0.ravel(), db0, dW1.ravel(), db1, [loss, len(y)]]).astype(np.float32))
np.save(f'{d}/eval.npy', np.array([(z2.argmax(1) == y).sum(), loss], dtype=np.float32))
`, dir)
  const read = (name: string): Float32Array => decodeNpy(readFileSync(join(dir, `${name}.npy`)), name).data as Float32Array
  return { x, y, w, grad: read('grad'), evalOut: read('eval') }
}

describe('mlp operators', () => {
  it('mlp-grad sums gradient, loss and rows over uneven shards as numpy\'s hand-written backward pass does', async () => {
    const ref = reference()
    const inputs = {
      x: hostTensor('float32', [rowsN, layers[0]!], ref.x),
      y: hostTensor('int32', [rowsN], ref.y),
      w: hostTensor('float32', [ref.w.length], ref.w)
    }
    const { out } = await runSharded(mlpGrad, inputs, { layers, activation: 'relu' }, { shards: 4, seed: 5, run: inProcess(mlpGrad as never, () => tf) })
    expect(out.shape).toEqual([mlpParamCount(layers) + 2])
    // float32 sums over 41 rows against float64: 1e-4 of each element (floor 1e-2 for values near zero).
    expect(maxRelativeError(out.data, ref.grad, 1e-2)).toBeLessThan(1e-4)
    expect(out.data[out.data.length - 1]).toBe(rowsN)

    const evaluated = await runSharded(mlpEval, inputs, { layers, activation: 'relu' }, { shards: 3, seed: 6, run: inProcess(mlpEval as never, () => tf) })
    expect(evaluated.out.data[0]).toBe(ref.evalOut[0])
    expect(maxRelativeError([evaluated.out.data[1] ?? 0], [ref.evalOut[1] ?? 0])).toBeLessThan(1e-5)
  })

  it('refuses labels outside the classes and weights of the wrong length, by code', () => {
    const x = hostTensor('float32', [2, 7])
    const w = hostTensor('float32', [mlpParamCount(layers)])
    expect(codeOf(() => mlpGrad.plan({ x, y: hostTensor('int32', [2], Int32Array.from([0, 3])), w }, { layers }))).toBe('ERR_BAD_LABEL')
    expect(codeOf(() => mlpGrad.plan({ x, y: hostTensor('int32', [2]), w: hostTensor('float32', [5]) }, { layers }))).toBe('ERR_SHAPE_MISMATCH')
    expect(codeOf(() => mlpGrad.plan({ x, y: hostTensor('int32', [2]), w }, { layers: [7] }))).toBe('ERR_BAD_PARAMS')
  })
})
