// Runs the kernels of cuda/kernels/torch_bench.cu on the CPU, for checking their indexing and
// synchronisation on a machine without a GPU (cuda/tests/suite/kernel_emulation.rs builds and
// drives it). Each block runs as blockDim.x host threads: __syncthreads is a barrier over the
// block, shared memory a static array (one block runs at a time), __dp4a the plain sum of four
// int8 products. It checks what the kernels compute, not how fast; the arithmetic is exact
// integer arithmetic, so a GPU must give the same bytes (checked by cuda/tests/suite/gpu.rs).
//
// stdin: one command, stdout: the answer.
//   chain N ITERS SEED MODE   MODE 0: aitbc_igemm_tn; MODE 1: a host product (plain loops, the
//                             stand-in for cuBLAS) -- each followed by aitbc_requant. Prints the
//                             step count the kernels recorded, then A_iters as hex, one row a line.
//   fill N SEED MATRIX T      aitbc_fill_input (T: transposed); the bytes as hex, one row a line.
//   gemm N SEED WORST         One aitbc_igemm_tn on the generated A_0 and B (WORST 1: every
//                             element -128 instead, the largest magnitudes); C, one row a line.

#include <barrier>
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
struct int4 {
    int x, y, z, w;
};
static inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }

thread_local dim3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;
static std::barrier<> *block_barrier;

static inline void __syncthreads() { block_barrier->arrive_and_wait(); }
// CUDA's __dp4a(int, int, int): c + the sum over bytes q of (int8)a.q * (int8)b.q.
static inline int __dp4a(int a, int b, int c)
{
    for (int q = 0; q < 4; ++q) {
        const signed char x = (signed char)(((unsigned)a >> (8 * q)) & 0xFFu);
        const signed char y = (signed char)(((unsigned)b >> (8 * q)) & 0xFFu);
        c += (int)x * (int)y;
    }
    return c;
}

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

static dim3 igemm_grid(unsigned n)
{
    const unsigned tiles = (n + 127) / 128;
    return dim3{tiles, tiles, 1};
}

static void print_rows(const std::vector<unsigned char> &x, unsigned n)
{
    for (unsigned r = 0; r < n; ++r) {
        for (unsigned c = 0; c < n; ++c) {
            std::printf("%02x", x[(size_t)r * n + c]);
        }
        std::printf("\n");
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
        std::vector<unsigned char> a(len), bt(len);
        std::vector<int> c(len);
        std::vector<unsigned> state(4, 0);
        launch(grid1d(len), B256, [&] { aitbc_fill_input(a.data(), n, seed, 0, 0); });
        launch(grid1d(len), B256, [&] { aitbc_fill_input(bt.data(), n, seed, 1, 1); });
        for (unsigned k = 0; k < iters; ++k) {
            if (mode == 0) {
                launch(igemm_grid(n), B256,
                       [&] { aitbc_igemm_tn(a.data(), bt.data(), c.data(), (int)n); });
            } else {
                for (unsigned i = 0; i < n; ++i) {
                    for (unsigned j = 0; j < n; ++j) {
                        int acc = 0;
                        for (unsigned t = 0; t < n; ++t) {
                            acc += (int)(signed char)a[(size_t)i * n + t] *
                                   (int)(signed char)bt[(size_t)j * n + t];
                        }
                        c[(size_t)i * n + j] = acc;
                    }
                }
            }
            launch(grid1d(len), B256,
                   [&] { aitbc_requant(c.data(), a.data(), len, state.data()); });
        }
        std::printf("%u %u %u %u\n", state[0], state[1], state[2], state[3]);
        print_rows(a, n);
        return 0;
    }
    if (cmd == "fill") {
        unsigned n, matrix;
        int transposed;
        unsigned long long seed;
        std::cin >> n >> seed >> matrix >> transposed;
        std::vector<unsigned char> x((size_t)n * n);
        launch(grid1d(x.size()), B256,
               [&] { aitbc_fill_input(x.data(), n, seed, matrix, transposed); });
        print_rows(x, n);
        return 0;
    }
    if (cmd == "gemm") {
        unsigned n, worst;
        unsigned long long seed;
        std::cin >> n >> seed >> worst;
        const size_t len = (size_t)n * n;
        std::vector<unsigned char> a(len, 0x80), bt(len, 0x80);
        std::vector<int> c(len, 0x5A5A5A5A);
        if (worst == 0) {
            launch(grid1d(len), B256, [&] { aitbc_fill_input(a.data(), n, seed, 0, 0); });
            launch(grid1d(len), B256, [&] { aitbc_fill_input(bt.data(), n, seed, 1, 1); });
        }
        launch(igemm_grid(n), B256, [&] { aitbc_igemm_tn(a.data(), bt.data(), c.data(), (int)n); });
        for (unsigned r = 0; r < n; ++r) {
            for (unsigned j = 0; j < n; ++j) {
                std::printf(j == 0 ? "%d" : " %d", c[(size_t)r * n + j]);
            }
            std::printf("\n");
        }
        return 0;
    }
    return 2;
}
