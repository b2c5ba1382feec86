/*
 * torch_bench on the GPU: the kernels of aitbc-cuda, compiled to PTX by scripts/gen-ptx.sh
 * (NVRTC 12.0, compute_70, PTX ISA 8.0) into torch_bench.ptx beside this file, which the Rust
 * crate embeds. Edit this file, then run `bash scripts/gen-ptx.sh` and commit both.
 *
 * The chain these kernels compute is defined in worker/src/torch_bench/mod.rs and must be
 * followed exactly: X_0 and W from the counter-based generator of worker/src/torch_bench/input.rs
 * (reproduced here bit for bit), then `iters` times X_{k+1} = rescale(X_k . W), row-major f32,
 * where rescale multiplies by an exact power of two when the largest magnitude leaves
 * [2^-32, 2^33).
 *
 * What this file must never do:
 *   - change the generator's arithmetic: every element must equal the CPU's bit for bit (the
 *     host check in cuda/tests/suite/host_check.rs compiles the AITBC_FN helpers below with the
 *     system C compiler and compares them with the pinned golden values);
 *   - let the compiler contract or reassociate where exactness is promised: the generator and
 *     the rescale use __fmul_rn/__fsub_rn, which are never fused;
 *   - use atomics or any order of accumulation that depends on scheduling in the products: each
 *     output element is one thread's fmaf chain over k = 0, 1, ..., n-1, so a result depends on
 *     (params, device) only;
 *   - expose C++ in the ABI: every kernel is extern "C" with plain pointer and integer arguments
 *     (the Rust side launches them by these names, listed in cuda/src/ptx.rs).
 *
 * The helpers marked AITBC_FN are plain C when this file is included by a host C compiler (no
 * __CUDACC__): that is how the generator and the rescale rule are checked on a machine with no
 * GPU. The kernels exist only for NVRTC.
 */

#ifdef __CUDACC__
#define AITBC_FN static __device__ __forceinline__
#define AITBC_MUL(a, b) __fmul_rn((a), (b))
#define AITBC_SUB(a, b) __fsub_rn((a), (b))
#else
#define AITBC_FN static inline
#define AITBC_MUL(a, b) ((a) * (b))
#define AITBC_SUB(a, b) ((a) - (b))
#endif

/* ---------------------------------------------------------------------------------------------
 * The input generator (worker/src/torch_bench/input.rs): SplitMix64 by element index.
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

/* The SplitMix64 state that generates matrix `matrix` (0: X_0, 1: W) of a job seeded `seed`. */
AITBC_FN unsigned long long aitbc_stream_key(unsigned long long seed, unsigned int matrix)
{
    return aitbc_mix(seed ^ ((unsigned long long)matrix * AITBC_GAMMA));
}

/* The top 24 bits of `bits` as a uniform f32 on [-1, 1 - 2^-23]: every step is exact. */
AITBC_FN float aitbc_unit_f32(unsigned long long bits)
{
    const float inv_2_23 = 1.0f / 8388608.0f; /* 2^-23, exact */
    const float u = (float)(unsigned int)(bits >> 40); /* < 2^24: exact */
    return AITBC_SUB(AITBC_MUL(u, inv_2_23), 1.0f);
}

/* Element `index` (row-major) of the matrix whose stream key is `key`, before scaling. */
AITBC_FN float aitbc_input_keyed(unsigned long long key, unsigned long long index)
{
    return aitbc_unit_f32(aitbc_mix(key + (index + 1ULL) * AITBC_GAMMA));
}

/* ---------------------------------------------------------------------------------------------
 * The rescale rule (worker/src/torch_bench/mod.rs, rescale_exponent).
 * ------------------------------------------------------------------------------------------- */

/* Largest unbiased exponent left alone; the smallest left alone is its negation. */
#define AITBC_RESCALE_LIMIT_LOG2 32

/* First value of `max_abs_bits` that is not finite (infinity; NaNs are above it). */
#define AITBC_NON_FINITE 0x7F800000u

/*
 * The rule, for a finite matrix whose largest `bits & 0x7FFFFFFF` is `max_abs_bits`: returns 0
 * when nothing is to be done (all zeros, or unbiased exponent e in [-32, 32]); otherwise returns
 * 1 and sets *k = clamp(-e, -126, 126), the power of two to multiply every element by.
 */
AITBC_FN int aitbc_rescale_exponent(unsigned int max_abs_bits, int *k)
{
    int e;
    int s;
    if (max_abs_bits == 0u) {
        return 0;
    }
    e = (int)(max_abs_bits >> 23) - 127;
    if (e >= -AITBC_RESCALE_LIMIT_LOG2 && e <= AITBC_RESCALE_LIMIT_LOG2) {
        return 0;
    }
    s = -e;
    if (s < -126) {
        s = -126;
    }
    if (s > 126) {
        s = 126;
    }
    *k = s;
    return 1;
}

/* 2^k as an f32, for k in -126..=127 (a normal number, so multiplying by it is exact). */
AITBC_FN float aitbc_pow2(int k)
{
    union {
        unsigned int u;
        float f;
    } v;
    v.u = (unsigned int)(127 + k) << 23;
    return v.f;
}

#ifdef __CUDACC__

/*
 * The chain's small device state, one array of AITBC_STATE_WORDS u32 per job:
 *   [0], [1]  the largest |x| bits of the product just computed, alternating by iteration
 *             (iteration k uses slot k % 2; the rescale of iteration k zeroes slot (k+1) % 2);
 *   [2]       how many products were followed by a rescale;
 *   [3]       the first non-finite max bits seen (0 while the chain is finite).
 */
#define AITBC_STATE_RESCALES 2
#define AITBC_STATE_NON_FINITE 3

/* Reduces `m` to its maximum over the warp (all 32 lanes must be active). */
static __device__ __forceinline__ unsigned int aitbc_warp_max(unsigned int m)
{
    for (int offset = 16; offset > 0; offset >>= 1) {
        m = max(m, __shfl_xor_sync(0xFFFFFFFFu, m, offset));
    }
    return m;
}

/* `x`'s magnitude bits: for finite values they order like |x|; NaN and infinity sort above. */
static __device__ __forceinline__ unsigned int aitbc_abs_bits(float x)
{
    return __float_as_uint(x) & 0x7FFFFFFFu;
}

/*
 * out[i] = input(seed, matrix, i) * scale for i < len (scale rounded once; pass 1.0 for X_0,
 * sqrt(3/n) computed in f64 and rounded to f32 for W). Any 1-D launch; grid-stride loop.
 */
extern "C" __global__ void __launch_bounds__(256)
aitbc_fill_input(float *__restrict__ out, unsigned long long len, unsigned long long seed,
                 unsigned int matrix, float scale)
{
    const unsigned long long key = aitbc_stream_key(seed, matrix);
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += stride) {
        out[i] = AITBC_MUL(aitbc_input_keyed(key, i), scale);
    }
}

/* ---------------------------------------------------------------------------------------------
 * SGEMM: c = a . b for row-major n x n matrices.
 *
 * Each 256-thread block computes a 128 x 128 tile of c, walking k in steps of 8 through shared
 * memory (a's tile stored transposed, two buffers so that the next step's global loads overlap
 * this step's arithmetic). Each thread holds an 8 x 8 block of accumulators: rows
 * {ty*4 + i, 64 + ty*4 + i} and columns {tx*4 + j, 64 + tx*4 + j} (i, j < 4), which keeps its
 * float4 shared-memory reads free of bank conflicts. Any n >= 1: out-of-range elements load as
 * zero and are never stored; when n % 4 == 0 the global loads and stores are float4.
 *
 * The epilogue also folds the largest |c| bits of the block into state[slot] (one atomicMax per
 * warp), which is the max-reduction the rescale needs, without a second pass over c.
 * Launch: grid (ceil(n/128), ceil(n/128)), block 256, no dynamic shared memory.
 * ------------------------------------------------------------------------------------------- */

#define TB_BM 128
#define TB_BN 128
#define TB_BK 8
#define TB_THREADS 256
#define TB_APAD 4 /* keeps the transposed stores of a's tile off one bank; 16-byte aligned */

extern "C" __global__ void __launch_bounds__(TB_THREADS)
aitbc_sgemm_nn(const float *__restrict__ a, const float *__restrict__ b, float *__restrict__ c,
               int n, unsigned int *__restrict__ state, int slot)
{
    __shared__ __align__(16) float as[2][TB_BK][TB_BM + TB_APAD];
    __shared__ __align__(16) float bs[2][TB_BK][TB_BN];

    const int tid = threadIdx.x;
    const int tx = tid & 15;
    const int ty = tid >> 4;
    const int row0 = blockIdx.y * TB_BM;
    const int col0 = blockIdx.x * TB_BN;
    const bool vec = (n & 3) == 0;
    const size_t ld = (size_t)n;

    /* What this thread loads: a[row0 + ar][k0 + ak .. +3] and b[k0 + bk][col0 + bc .. +3]. */
    const int ar = tid >> 1;
    const int ak = (tid & 1) << 2;
    const int bk = tid >> 5;
    const int bc = (tid & 31) << 2;

    float ra[4];
    float rb[4];
    float acc[8][8];
    for (int i = 0; i < 8; ++i) {
        for (int j = 0; j < 8; ++j) {
            acc[i][j] = 0.0f;
        }
    }

    /* Global -> registers for the k-step starting at k0 (zeros outside the matrices). */
#define TB_LOAD(k0)                                                                                \
    do {                                                                                           \
        const int gr = row0 + ar;                                                                  \
        const int gk = (k0) + ak;                                                                  \
        const int hk = (k0) + bk;                                                                  \
        const int hc = col0 + bc;                                                                  \
        if (vec) {                                                                                 \
            float4 va = make_float4(0.0f, 0.0f, 0.0f, 0.0f);                                       \
            float4 vb = make_float4(0.0f, 0.0f, 0.0f, 0.0f);                                       \
            if (gr < n && gk < n) {                                                                \
                va = *(const float4 *)(a + (size_t)gr * ld + gk);                                  \
            }                                                                                      \
            if (hk < n && hc < n) {                                                                \
                vb = *(const float4 *)(b + (size_t)hk * ld + hc);                                  \
            }                                                                                      \
            ra[0] = va.x; ra[1] = va.y; ra[2] = va.z; ra[3] = va.w;                                \
            rb[0] = vb.x; rb[1] = vb.y; rb[2] = vb.z; rb[3] = vb.w;                                \
        } else {                                                                                   \
            for (int q = 0; q < 4; ++q) {                                                          \
                ra[q] = (gr < n && gk + q < n) ? a[(size_t)gr * ld + gk + q] : 0.0f;               \
                rb[q] = (hk < n && hc + q < n) ? b[(size_t)hk * ld + hc + q] : 0.0f;               \
            }                                                                                      \
        }                                                                                          \
    } while (0)

    /* Registers -> shared buffer `buf`. */
#define TB_STORE(buf)                                                                              \
    do {                                                                                           \
        for (int q = 0; q < 4; ++q) {                                                              \
            as[(buf)][ak + q][ar] = ra[q];                                                         \
        }                                                                                          \
        *(float4 *)&bs[(buf)][bk][bc] = make_float4(rb[0], rb[1], rb[2], rb[3]);                   \
    } while (0)

    TB_LOAD(0);
    TB_STORE(0);
    __syncthreads();

    int buf = 0;
    for (int k0 = 0; k0 < n; k0 += TB_BK) {
        const bool more = k0 + TB_BK < n;
        if (more) {
            TB_LOAD(k0 + TB_BK);
        }
#pragma unroll
        for (int kk = 0; kk < TB_BK; ++kk) {
            const float4 a0 = *(const float4 *)&as[buf][kk][ty * 4];
            const float4 a1 = *(const float4 *)&as[buf][kk][64 + ty * 4];
            const float4 b0 = *(const float4 *)&bs[buf][kk][tx * 4];
            const float4 b1 = *(const float4 *)&bs[buf][kk][64 + tx * 4];
            const float av[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
            const float bv[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
            for (int i = 0; i < 8; ++i) {
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
                }
            }
        }
        if (more) {
            TB_STORE(buf ^ 1);
        }
        __syncthreads();
        buf ^= 1;
    }
#undef TB_LOAD
#undef TB_STORE

    unsigned int m = 0u;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int row = row0 + (i < 4 ? ty * 4 + i : 64 + ty * 4 + (i - 4));
        if (row >= n) {
            continue;
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int col = col0 + h * 64 + tx * 4;
            float *dst = c + (size_t)row * ld + col;
            const float *v = &acc[i][h * 4];
            if (vec && col < n) {
                *(float4 *)dst = make_float4(v[0], v[1], v[2], v[3]);
                for (int q = 0; q < 4; ++q) {
                    m = max(m, aitbc_abs_bits(v[q]));
                }
            } else {
                for (int q = 0; q < 4; ++q) {
                    if (col + q < n) {
                        dst[q] = v[q];
                        m = max(m, aitbc_abs_bits(v[q]));
                    }
                }
            }
        }
    }
    m = aitbc_warp_max(m);
    if ((tid & 31) == 0 && m != 0u) {
        atomicMax(&state[slot], m);
    }
}

/*
 * state[slot] = max(state[slot], largest |x[i]| bits): the max-reduction for products that did
 * not come from aitbc_sgemm_nn (cuBLAS). Launch: block 256, any grid; grid-stride loop.
 */
extern "C" __global__ void __launch_bounds__(256)
aitbc_max_abs_bits(const float *__restrict__ x, unsigned long long len,
                   unsigned int *__restrict__ state, int slot)
{
    __shared__ unsigned int warp_max[8];
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    unsigned int m = 0u;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += stride) {
        m = max(m, aitbc_abs_bits(x[i]));
    }
    m = aitbc_warp_max(m);
    if ((threadIdx.x & 31) == 0) {
        warp_max[threadIdx.x >> 5] = m;
    }
    __syncthreads();
    if (threadIdx.x < 32) {
        m = threadIdx.x < 8 ? warp_max[threadIdx.x] : 0u;
        m = aitbc_warp_max(m);
        if (threadIdx.x == 0 && m != 0u) {
            atomicMax(&state[slot], m);
        }
    }
}

/*
 * Applies the rescale rule to x (len elements) from the max in state[slot]: multiplies every
 * element by 2^k when the rule says so (exact, no flush-to-zero), else leaves x alone. Block 0's
 * first thread also zeroes state[slot ^ 1] for the next product, counts the rescale, and records
 * the first non-finite max in state[3] (then nothing is scaled; the host reports the error).
 * Launch: block 256, any grid; grid-stride loop; every block reads the same state[slot].
 */
extern "C" __global__ void __launch_bounds__(256)
aitbc_rescale(float *__restrict__ x, unsigned long long len, unsigned int *__restrict__ state,
              int slot)
{
    const unsigned int m = state[slot];
    int k = 0;
    const int finite = m < AITBC_NON_FINITE;
    const int scale = finite && aitbc_rescale_exponent(m, &k);
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        state[slot ^ 1] = 0u;
        if (!finite) {
            if (state[AITBC_STATE_NON_FINITE] == 0u) {
                state[AITBC_STATE_NON_FINITE] = m;
            }
        } else if (scale) {
            state[AITBC_STATE_RESCALES] += 1u;
        }
    }
    if (!scale) {
        return;
    }
    const float s = aitbc_pow2(k);
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += stride) {
        x[i] = AITBC_MUL(x[i], s);
    }
}

#endif /* __CUDACC__ */
