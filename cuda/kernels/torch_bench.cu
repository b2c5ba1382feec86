/*
 * torch_bench on the GPU: the kernels of aitbc-cuda, compiled to PTX by scripts/gen-ptx.sh
 * (NVRTC 12.0, compute_70, PTX ISA 8.0) into torch_bench.ptx beside this file, which the Rust
 * crate embeds. Edit this file, then run `bash scripts/gen-ptx.sh` and commit both.
 *
 * The chain these kernels compute is specified in protocol/src/workload/torch_bench.rs and must
 * be followed exactly: n x n int8 matrices, row-major,
 *
 *     A_0 = input(seed, 0), B = input(seed, 1)
 *     C_k = A_k . B            exact in int32
 *     A_{k+1} = requant(C_k)   element-wise, for k = 0 .. iters-1
 *     output = A_iters
 *
 * with input(seed, m)[index] = top 8 bits of mix(key + (index + 1) * GAMMA), key =
 * mix(seed ^ m * GAMMA) (SplitMix64), and requant(c) = (((u32)c + 0x7F4A7C15) * 0x9E3779B1) >> 24
 * as an int8. The products are exact (|C| <= 128 * 128 * n < 2^31), so any order of summation
 * gives the same bytes: on the CPU, here, and in cuBLAS.
 *
 * B is kept on the device TRANSPOSED (Bt[j][t] = B[t][j], aitbc_fill_input with transposed = 1):
 * then row i of A and row j of Bt both hold their k values contiguously, which is what dp4a (four
 * k values in one 32-bit word) and cuBLAS's int8 "TN" layout want.
 *
 * What this file must never do:
 *   - change the generator's or the requantization's arithmetic: every byte must equal the
 *     protocol's (cuda/tests/suite/host_check.rs compiles the AITBC_FN helpers below with the
 *     system C compiler and compares them with the protocol's functions; kernel_emulation.rs
 *     runs the kernels themselves on the CPU against the protocol's reference chain);
 *   - compute the product in anything but exact integer arithmetic (no float, no saturation);
 *   - expose C++ in the ABI: every kernel is extern "C" with plain pointer and integer arguments
 *     (the Rust side launches them by these names, listed in cuda/src/ptx.rs).
 *
 * The helpers marked AITBC_FN are plain C when this file is included by a host C compiler (no
 * __CUDACC__): that is how the generator and the requantization are checked on a machine with
 * no GPU. The kernels are compiled by NVRTC, and by cuda/tests/emulate/cuda_on_host.cpp (which
 * defines __CUDACC__ and a small shim) to run them on the CPU.
 */

#ifdef __CUDACC__
#define AITBC_FN static __device__ __forceinline__
#else
#define AITBC_FN static inline
#endif

/* ---------------------------------------------------------------------------------------------
 * The input generator (protocol's `element`): SplitMix64 by element index.
 * ------------------------------------------------------------------------------------------- */

/* SplitMix64's increment, the golden ratio in 64-bit fixed point. */
#define AITBC_GAMMA 0x9E3779B97F4A7C15ULL

/* SplitMix64's output function. All arithmetic wraps modulo 2^64. */
AITBC_FN unsigned long long aitbc_mix(unsigned long long z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* The SplitMix64 state that generates matrix `matrix` (0: A_0, 1: B) of a job seeded `seed`. */
AITBC_FN unsigned long long aitbc_stream_key(unsigned long long seed, unsigned int matrix)
{
    return aitbc_mix(seed ^ ((unsigned long long)matrix * AITBC_GAMMA));
}

/* Element `index` (row-major) of the matrix whose stream key is `key`: the top 8 bits, as the
 * byte of an int8. */
AITBC_FN unsigned char aitbc_element(unsigned long long key, unsigned long long index)
{
    return (unsigned char)(aitbc_mix(key + (index + 1ULL) * AITBC_GAMMA) >> 56);
}

/* ---------------------------------------------------------------------------------------------
 * The requantization (protocol's `requant`): an exact product back to int8.
 * ------------------------------------------------------------------------------------------- */

/* The byte of requant(c): the top byte of ((u32)c + 0x7F4A7C15) * 0x9E3779B1, wrapping. */
AITBC_FN unsigned char aitbc_requant(int c)
{
    return (unsigned char)((((unsigned int)c + 0x7F4A7C15u) * 0x9E3779B1u) >> 24);
}

#ifdef __CUDACC__

/*
 * The chain's small device state, AITBC_STATE_WORDS u32 per job (zeroed before the chain):
 *   [0]        how many requantizations ran (the host checks it equals `iters`);
 *   [1] .. [3] reserved, stay zero.
 */
#define AITBC_STATE_PRODUCTS 0

/*
 * out[p] for p < n*n: element(seed, matrix, p) (row-major), or with transposed != 0 the
 * transpose, out[j*n + t] = element(seed, matrix, t*n + j). n <= 65536, so p < 2^32 and the
 * transposed index is found with 32-bit division. Any 1-D launch; grid-stride loop.
 */
extern "C" __global__ void __launch_bounds__(256)
aitbc_fill_input(unsigned char *__restrict__ out, unsigned int n, unsigned long long seed,
                 unsigned int matrix, int transposed)
{
    const unsigned long long key = aitbc_stream_key(seed, matrix);
    const unsigned long long n64 = n;
    const unsigned long long len = n64 * n64;
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long p = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; p < len;
         p += stride) {
        const unsigned int q = (unsigned int)p;
        const unsigned long long index =
            transposed ? (unsigned long long)(q % n) * n64 + q / n : p;
        out[p] = aitbc_element(key, index);
    }
}

/*
 * a[i] = requant(c[i]) for i < len; block 0's first thread also counts the step in
 * state[AITBC_STATE_PRODUCTS]. Block 256, any grid; grid-stride loop.
 */
extern "C" __global__ void __launch_bounds__(256)
aitbc_requant(const int *__restrict__ c, unsigned char *__restrict__ a, unsigned long long len,
              unsigned int *__restrict__ state)
{
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        state[AITBC_STATE_PRODUCTS] += 1u;
    }
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += stride) {
        a[i] = aitbc_requant(c[i]);
    }
}

/* ---------------------------------------------------------------------------------------------
 * IGEMM: c = a . b for n x n int8 matrices, a row-major, b given transposed (bt[j][t] = b[t][j]),
 * c row-major int32, exact.
 *
 * Each 256-thread block computes a 128 x 128 tile of c, walking k in steps of 32 (8 words of
 * four int8) through shared memory, where both tiles are stored word-transposed
 * (s[k word][row]) so that a thread reads its rows' and columns' words as int4; two buffers let
 * the next step's global loads overlap this step's arithmetic. Each thread holds an 8 x 8 block
 * of int32 accumulators: rows {ty*4 + i, 64 + ty*4 + i} and columns {tx*4 + j, 64 + tx*4 + j}
 * (i, j < 4), each updated with __dp4a (four int8 products and their sum, sm_61+). Any n >= 1:
 * out-of-range k values load as zero (adding nothing) and out-of-range elements are never
 * stored; when n % 16 == 0 the global loads are int4, when n % 4 == 0 the stores are int4.
 * Launch: grid (ceil(n/128), ceil(n/128)), block 256, no dynamic shared memory.
 * ------------------------------------------------------------------------------------------- */

#define IG_BM 128     /* the tile edge */
#define IG_BKW 8      /* k words (4 int8 each) per step */
#define IG_THREADS 256
#define IG_PAD 4 /* keeps the word-transposed stores off one bank; rows stay 16-byte aligned */

/* The four bytes m[r][k .. k+3] (zero where r or k+q is outside the n x n matrix) as one word,
 * byte q in bits 8q .. 8q+7: the packing a little-endian 32-bit load gives. */
static __device__ __forceinline__ int aitbc_load4(const unsigned char *__restrict__ m, int r,
                                                  int k, int n)
{
    unsigned int w = 0u;
    if (r < n) {
        const unsigned char *row = m + (size_t)r * (size_t)n;
        for (int q = 0; q < 4; ++q) {
            if (k + q < n) {
                w |= (unsigned int)row[k + q] << (8 * q);
            }
        }
    }
    return (int)w;
}

extern "C" __global__ void __launch_bounds__(IG_THREADS)
aitbc_igemm_tn(const unsigned char *__restrict__ a, const unsigned char *__restrict__ bt,
               int *__restrict__ c, int n)
{
    __shared__ __align__(16) int as[2][IG_BKW][IG_BM + IG_PAD];
    __shared__ __align__(16) int bs[2][IG_BKW][IG_BM + IG_PAD];

    const int tid = threadIdx.x;
    const int tx = tid & 15;
    const int ty = tid >> 4;
    const int row0 = blockIdx.y * IG_BM;
    const int col0 = blockIdx.x * IG_BM;
    const bool vec = (n & 15) == 0;
    const size_t ld = (size_t)n;

    /* What this thread loads per step: words lw .. lw+3 (k0 + 4*lw .. +15) of row row0 + lr of
     * a and of row col0 + lr of bt. */
    const int lr = tid >> 1;
    const int lw = (tid & 1) << 2;

    int ra[4];
    int rb[4];
    int acc[8][8];
    for (int i = 0; i < 8; ++i) {
        for (int j = 0; j < 8; ++j) {
            acc[i][j] = 0;
        }
    }

    /* Global -> registers for the k-step starting at k0 (zeros outside the matrices). */
#define IG_LOAD(k0)                                                                                \
    do {                                                                                           \
        const int gr = row0 + lr;                                                                  \
        const int gc = col0 + lr;                                                                  \
        const int gk = (k0) + lw * 4;                                                              \
        if (vec) {                                                                                 \
            int4 va = make_int4(0, 0, 0, 0);                                                       \
            int4 vb = make_int4(0, 0, 0, 0);                                                       \
            if (gr < n && gk < n) {                                                                \
                va = *(const int4 *)(a + (size_t)gr * ld + gk);                                    \
            }                                                                                      \
            if (gc < n && gk < n) {                                                                \
                vb = *(const int4 *)(bt + (size_t)gc * ld + gk);                                   \
            }                                                                                      \
            ra[0] = va.x; ra[1] = va.y; ra[2] = va.z; ra[3] = va.w;                                \
            rb[0] = vb.x; rb[1] = vb.y; rb[2] = vb.z; rb[3] = vb.w;                                \
        } else {                                                                                   \
            for (int q = 0; q < 4; ++q) {                                                          \
                ra[q] = aitbc_load4(a, gr, gk + 4 * q, n);                                         \
                rb[q] = aitbc_load4(bt, gc, gk + 4 * q, n);                                        \
            }                                                                                      \
        }                                                                                          \
    } while (0)

    /* Registers -> shared buffer `buf`, word-transposed. */
#define IG_STORE(buf)                                                                              \
    do {                                                                                           \
        for (int q = 0; q < 4; ++q) {                                                              \
            as[(buf)][lw + q][lr] = ra[q];                                                         \
            bs[(buf)][lw + q][lr] = rb[q];                                                         \
        }                                                                                          \
    } while (0)

    IG_LOAD(0);
    IG_STORE(0);
    __syncthreads();

    int buf = 0;
    for (int k0 = 0; k0 < n; k0 += IG_BKW * 4) {
        const bool more = k0 + IG_BKW * 4 < n;
        if (more) {
            IG_LOAD(k0 + IG_BKW * 4);
        }
#pragma unroll
        for (int kw = 0; kw < IG_BKW; ++kw) {
            const int4 a0 = *(const int4 *)&as[buf][kw][ty * 4];
            const int4 a1 = *(const int4 *)&as[buf][kw][64 + ty * 4];
            const int4 b0 = *(const int4 *)&bs[buf][kw][tx * 4];
            const int4 b1 = *(const int4 *)&bs[buf][kw][64 + tx * 4];
            const int av[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
            const int bv[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
            for (int i = 0; i < 8; ++i) {
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    acc[i][j] = __dp4a(av[i], bv[j], acc[i][j]);
                }
            }
        }
        if (more) {
            IG_STORE(buf ^ 1);
        }
        __syncthreads();
        buf ^= 1;
    }
#undef IG_LOAD
#undef IG_STORE

    const bool vec_out = (n & 3) == 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int row = row0 + (i < 4 ? ty * 4 + i : 64 + ty * 4 + (i - 4));
        if (row >= n) {
            continue;
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int col = col0 + h * 64 + tx * 4;
            int *dst = c + (size_t)row * ld + col;
            const int *v = &acc[i][h * 4];
            if (vec_out && col < n) {
                *(int4 *)dst = make_int4(v[0], v[1], v[2], v[3]);
            } else {
                for (int q = 0; q < 4; ++q) {
                    if (col + q < n) {
                        dst[q] = v[q];
                    }
                }
            }
        }
    }
}

#endif /* __CUDACC__ */
