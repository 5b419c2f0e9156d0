import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { decodeNpy, encodeNpy, readNpyFile, writeNpyFile } from '../../src/compute/npy.ts'
import { hostTensor } from '../../src/compute/tensor.ts'
import { python as numpy, tempDir } from '../helpers/numpy.ts'
import { codeOf, asyncCodeOf } from '../helpers/codes.ts'

const { dir, cleanup } = tempDir()
afterAll(cleanup)

describe('reading files numpy wrote', () => {
  // descr numpy writes, numpy expression, our dtype
  const cases: Array<[string, string, 'float32' | 'int32']> = [
    ['<f4', "np.random.default_rng(1).standard_normal((3, 4, 5)).astype('<f4')", 'float32'],
    ['<f8', "np.random.default_rng(2).standard_normal((7, 3))", 'float32'],
    ['<i4', "np.arange(-12, 12, dtype='<i4').reshape(2, 3, 4)", 'int32'],
    ['<i8', "np.array([[-2**31, 2**31 - 1], [0, 5]], dtype='<i8')", 'int32'],
    ['<i2', "np.array([-32768, 32767, 1], dtype='<i2')", 'int32'],
    ['|i1', "np.array([-128, 127, 0, 3], dtype='i1')", 'int32'],
    ['|u1', "np.array([0, 255, 7], dtype='u1')", 'int32'],
    ['|b1', "np.array([True, False, True])", 'int32'],
    ['scalar', "np.array(2.5, dtype='<f4')", 'float32'],
    ['zero-size', "np.zeros((0, 3), dtype='<f4')", 'float32']
  ]
  for (const [label, expr, dtype] of cases) {
    it(`${label} round-trips to the values numpy holds`, async () => {
      const file = join(dir, `np-${label.replace(/\W/g, '_')}.npy`)
      const out = numpy(`a = ${expr}\nnp.save(${JSON.stringify(file)}, a)\nprint(json.dumps({'shape': list(a.shape), 'values': a.astype(np.float64).ravel().tolist()}))`, dir)
      const ref = JSON.parse(out) as { shape: number[], values: number[] }
      const t = await readNpyFile(file)
      expect(t.dtype).toBe(dtype)
      expect(t.shape).toEqual(ref.shape)
      // float64 files narrow to float32: compare with the float32 rounding of numpy's value.
      expect(Array.from(t.data)).toEqual(ref.values.map(v => dtype === 'float32' ? Math.fround(v) : v))
    })
  }

  for (const version of ['(2, 0)', '(3, 0)']) {
    it(`reads format version ${version}`, async () => {
      const file = join(dir, `v${version.replace(/\D/g, '')}.npy`)
      numpy(`a = np.arange(6, dtype='<f4').reshape(2, 3)\nwith open(${JSON.stringify(file)}, 'wb') as f: np.lib.format.write_array(f, a, version=${version})`, dir)
      const bytes = readFileSync(file)
      expect(bytes[6]).toBe(Number(version[1]))
      // A Node Buffer, as readFileSync returns it: a view into a shared pool.
      const t = decodeNpy(bytes, file)
      expect(t.shape).toEqual([2, 3])
      expect(Array.from(t.data)).toEqual([0, 1, 2, 3, 4, 5])
    })
  }
})

describe('files we write', () => {
  it('numpy reads them back with the same dtype, shape and values', async () => {
    const f = hostTensor('float32', [2, 3, 2], Float32Array.from({ length: 12 }, (_, i) => i * 0.25 - 1.5))
    const i = hostTensor('int32', [5], Int32Array.from([-(2 ** 31), -1, 0, 1, 2 ** 31 - 1]))
    const s = hostTensor('float32', [], Float32Array.from([Math.fround(3.1)]))
    const z = hostTensor('int32', [0, 4])
    for (const [name, t] of Object.entries({ f, i, s, z })) await writeNpyFile(join(dir, `ours-${name}.npy`), t)
    const out = numpy(`r = {}\nfor n in 'fisz':\n  a = np.load(d + '/ours-' + n + '.npy', allow_pickle=False)\n  r[n] = {'dtype': a.dtype.str, 'shape': list(a.shape), 'values': a.astype(np.float64).ravel().tolist(), 'c': bool(a.flags.c_contiguous)}\nprint(json.dumps(r))`, dir)
    const got = JSON.parse(out) as Record<string, { dtype: string, shape: number[], values: number[], c: boolean }>
    for (const [name, t] of Object.entries({ f, i, s, z })) {
      expect(got[name]?.dtype).toBe(t.dtype === 'float32' ? '<f4' : '<i4')
      expect(got[name]?.shape).toEqual(t.shape)
      expect(got[name]?.values).toEqual(Array.from(t.data))
    }
  })

  it('pads the header so the data starts on a 64-byte boundary', () => {
    const bytes = encodeNpy(hostTensor('float32', [3, 1], new Float32Array(3)))
    const headerLen = bytes[8]! + bytes[9]! * 256
    expect((10 + headerLen) % 64).toBe(0)
    expect(bytes[10 + headerLen - 1]).toBe(0x0a)
  })

  it('encodes a view without the rest of its buffer', () => {
    const big = Float32Array.from([1, 2, 3, 4, 5, 6])
    const t = decodeNpy(encodeNpy(hostTensor('float32', [2], big.subarray(2, 4))), 'view')
    expect(Array.from(t.data)).toEqual([3, 4])
  })
})

describe('rejections', () => {
  function numpyFile (name: string, code: string): string {
    const file = join(dir, `${name}.npy`)
    numpy(code.replaceAll('FILE', JSON.stringify(file)), dir)
    return file
  }

  it('refuses Fortran order', async () => {
    const file = numpyFile('fortran', "np.save(FILE, np.asfortranarray(np.arange(6, dtype='<f4').reshape(2, 3)))")
    expect(readFileSync(file).toString('latin1')).toContain("'fortran_order': True")
    expect(await asyncCodeOf(readNpyFile(file))).toBe('ERR_BAD_NPY')
  })

  it('refuses big-endian data', async () => {
    const file = numpyFile('big-endian', "np.save(FILE, np.arange(4, dtype='>f4'))")
    expect(await asyncCodeOf(readNpyFile(file))).toBe('ERR_BAD_NPY')
  })

  it('refuses object arrays (pickles)', async () => {
    const file = numpyFile('object', "np.save(FILE, np.array([{'a': 1}, None], dtype=object), allow_pickle=True)")
    expect(await asyncCodeOf(readNpyFile(file))).toBe('ERR_BAD_NPY')
  })

  it('refuses structured dtypes', async () => {
    const file = numpyFile('structured', "np.save(FILE, np.zeros(3, dtype=[('x', '<f4'), ('y', '<i4')]))")
    expect(await asyncCodeOf(readNpyFile(file))).toBe('ERR_BAD_NPY')
  })

  it('refuses an unknown descr', async () => {
    const file = numpyFile('complex', "np.save(FILE, np.zeros(3, dtype='<c8'))")
    expect(await asyncCodeOf(readNpyFile(file))).toBe('ERR_BAD_NPY')
  })

  it('refuses bytes that are not .npy', () => {
    expect(codeOf(() => decodeNpy(new TextEncoder().encode('{"not": "npy"} and some more text'), 'garbage'))).toBe('ERR_BAD_NPY')
    expect(codeOf(() => decodeNpy(new Uint8Array(0), 'empty'))).toBe('ERR_BAD_NPY')
  })

  it('refuses truncated data and a truncated header', () => {
    const bytes = encodeNpy(hostTensor('float32', [4, 4], new Float32Array(16)))
    expect(codeOf(() => decodeNpy(bytes.subarray(0, bytes.length - 1), 'cut'))).toBe('ERR_BAD_NPY')
    expect(codeOf(() => decodeNpy(bytes.subarray(0, 40), 'cut-header'))).toBe('ERR_BAD_NPY')
  })

  it('refuses bytes after the declared data', () => {
    const bytes = encodeNpy(hostTensor('int32', [2], new Int32Array(2)))
    const longer = new Uint8Array(bytes.length + 4)
    longer.set(bytes)
    expect(codeOf(() => decodeNpy(longer, 'long'))).toBe('ERR_BAD_NPY')
  })

  it('refuses values that do not fit the narrowed dtype', async () => {
    const big = numpyFile('i8-range', "np.save(FILE, np.array([1, 2**31], dtype='<i8'))")
    expect(await asyncCodeOf(readNpyFile(big))).toBe('ERR_BAD_NPY')
    const huge = numpyFile('f8-range', "np.save(FILE, np.array([1.0, 1e300]))")
    expect(await asyncCodeOf(readNpyFile(huge))).toBe('ERR_BAD_NPY')
  })

  it('refuses a tensor over the limit', async () => {
    const file = numpyFile('limit', "np.save(FILE, np.zeros((16, 16), dtype='<f4'))")
    expect(await asyncCodeOf(readNpyFile(file, { maxTensorBytes: 1023 }))).toBe('ERR_LIMIT_EXCEEDED')
    expect((await readNpyFile(file, { maxTensorBytes: 1024 })).shape).toEqual([16, 16])
  })

  it('checks the declared size before reading or allocating the data', () => {
    // The header claims 10^12 floats and no data follows: the answer must be
    // the limit, not "truncated" (which would mean the size was not checked
    // first) and not an allocation failure.
    const header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 1000000), }"
    const padded = header + ' '.repeat(64 - ((10 + header.length + 1) % 64)) + '\n'
    const bytes = new Uint8Array(10 + padded.length)
    bytes.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0, padded.length & 0xff, padded.length >> 8])
    bytes.set(new TextEncoder().encode(padded), 10)
    expect(codeOf(() => decodeNpy(bytes, 'huge'))).toBe('ERR_LIMIT_EXCEEDED')
  })

  it('refuses an unknown format version and extra header keys', () => {
    const bytes = encodeNpy(hostTensor('float32', [1], new Float32Array(1)))
    const v9 = bytes.slice()
    v9[6] = 9
    expect(codeOf(() => decodeNpy(v9, 'v9'))).toBe('ERR_BAD_NPY')
    const text = new TextDecoder('latin1').decode(bytes).replace("'shape': (1,), ", "'shape': (1,), 'x': 1")
    const extra = Uint8Array.from(text, c => c.charCodeAt(0))
    expect(codeOf(() => decodeNpy(extra, 'extra'))).toBe('ERR_BAD_NPY')
  })

  it('names the input in the message', () => {
    try {
      decodeNpy(new Uint8Array(3), 'inputs/a.npy')
      expect.unreachable()
    } catch (err) {
      expect((err as Error).message).toContain('inputs/a.npy')
      expect((err as Error).name).toBe('InvalidInputError')
    }
  })
})
