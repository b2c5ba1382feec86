// Runs the kernels of cuda/kernels/torch_bench.cu on the CPU, for checking their indexing and
// synchronisation on a machine without a GPU (cuda/tests/suite/kernel_emulation.rs builds and
// drives it). Each block runs as blockDim.x host threads: __syncthreads is a barrier over the
// block, warp shuffles a barrier over the warp, shared memory a static array (one block runs at
// a time), atomics std::atomic_ref. It checks what the kernels compute, not how fast, and says
// nothing about the GPU's own arithmetic (fmaf here is the C library's, also correctly rounded).
//
// stdin: one command, stdout: the answer.
//   chain N ITERS SEED MODE   MODE 0: aitbc_sgemm_nn; MODE 1: a host product + aitbc_max_abs_bits.
//                             Prints the rescale count, then X_iters as hex bits, one a line.
//   rescale LEN BITS...       Puts the floats in x, runs aitbc_max_abs_bits and aitbc_rescale on
//                             slot 0; prints the state words, then x as hex bits.

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct float4 {
    float x, y, z, w;
};
static inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

thread_local dim3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;
static std::barrier<> *block_barrier;
static std::barrier<> *warp_barrier[32];
static unsigned warp_scratch[32][32];

static inline void __syncthreads() { block_barrier->arrive_and_wait(); }
static inline unsigned __shfl_xor_sync(unsigned, unsigned v, int offset)
{
    const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    warp_scratch[warp][lane] = v;
    warp_barrier[warp]->arrive_and_wait();
    const unsigned r = warp_scratch[warp][lane ^ offset];
    warp_barrier[warp]->arrive_and_wait();
    return r;
}
static inline unsigned atomicMax(unsigned *p, unsigned v)
{
    std::atomic_ref<unsigned> a(*p);
    unsigned old = a.load();
    while (old < v && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}
static inline unsigned __float_as_uint(float f)
{
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }

#define __CUDACC__ 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __shared__ static
#define __align__(x) __attribute__((aligned(x)))
#define __restrict__ __restrict
#include KERNEL_SOURCE

static void launch(dim3 grid, dim3 block, const std::function<void()> &kernel)
{
    gridDim = grid;
    blockDim = block;
    const unsigned threads = block.x;
    for (unsigned by = 0; by < grid.y; ++by) {
        for (unsigned bx = 0; bx < grid.x; ++bx) {
            std::barrier<> bar(threads);
            block_barrier = &bar;
            for (unsigned w = 0; w < (threads + 31) / 32; ++w) {
                warp_barrier[w] = new std::barrier<>(32);
            }
            std::vector<std::thread> pool;
            for (unsigned t = 0; t < threads; ++t) {
                pool.emplace_back([&, t, bx, by] {
                    threadIdx = dim3{t, 0, 0};
                    blockIdx = dim3{bx, by, 0};
                    kernel();
                });
            }
            for (auto &th : pool) {
                th.join();
            }
            for (unsigned w = 0; w < (threads + 31) / 32; ++w) {
                delete warp_barrier[w];
            }
        }
    }
}

static const dim3 B256{256, 1, 1};
// At most 4 blocks: fewer host threads, and the grid-stride loops go round more than once.
static dim3 grid1d(unsigned long long len)
{
    unsigned g = (unsigned)((len + 255) / 256);
    return dim3{g < 1 ? 1 : (g > 4 ? 4 : g), 1, 1};
}

static void print_bits(const std::vector<float> &x)
{
    for (float v : x) {
        std::printf("%08x\n", __float_as_uint(v));
    }
}

int main()
{
    std::string cmd;
    std::cin >> cmd;
    if (cmd == "chain") {
        unsigned n, iters, mode;
        unsigned long long seed;
        std::cin >> n >> iters >> seed >> mode;
        const unsigned long long len = (unsigned long long)n * n;
        std::vector<float> x(len), next(len), w(len);
        std::vector<unsigned> state(4, 0);
        const float scale = (float)std::sqrt(3.0 / (double)n);
        launch(grid1d(len), B256, [&] { aitbc_fill_input(x.data(), len, seed, 0, 1.0f); });
        launch(grid1d(len), B256, [&] { aitbc_fill_input(w.data(), len, seed, 1, scale); });
        for (unsigned k = 0; k < iters; ++k) {
            const int slot = (int)(k % 2);
            if (mode == 0) {
                const unsigned tiles = (n + 127) / 128;
                launch(dim3{tiles, tiles, 1}, B256, [&] {
                    aitbc_sgemm_nn(x.data(), w.data(), next.data(), (int)n, state.data(), slot);
                });
            } else {
                for (unsigned r = 0; r < n; ++r) {
                    for (unsigned c = 0; c < n; ++c) {
                        float acc = 0.0f;
                        for (unsigned q = 0; q < n; ++q) {
                            acc = std::fmaf(x[(size_t)r * n + q], w[(size_t)q * n + c], acc);
                        }
                        next[(size_t)r * n + c] = acc;
                    }
                }
                launch(grid1d(len), B256,
                       [&] { aitbc_max_abs_bits(next.data(), len, state.data(), slot); });
            }
            launch(grid1d(len), B256, [&] { aitbc_rescale(next.data(), len, state.data(), slot); });
            std::swap(x, next);
        }
        std::printf("%u\n", state[2]);
        print_bits(x);
        return 0;
    }
    if (cmd == "rescale") {
        unsigned long long len;
        std::cin >> len;
        std::vector<float> x(len);
        for (auto &v : x) {
            unsigned bits;
            std::cin >> std::hex >> bits >> std::dec;
            std::memcpy(&v, &bits, 4);
        }
        std::vector<unsigned> state(4, 0);
        state[1] = 12345; // slot 1 must be zeroed by the rescale of slot 0
        launch(grid1d(len), B256, [&] { aitbc_max_abs_bits(x.data(), len, state.data(), 0); });
        launch(grid1d(len), B256, [&] { aitbc_rescale(x.data(), len, state.data(), 0); });
        std::printf("%08x %08x %08x %08x\n", state[0], state[1], state[2], state[3]);
        print_bits(x);
        return 0;
    }
    return 2;
}
