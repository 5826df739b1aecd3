// Host shim: lets g++ compile the CUDA kernels in this directory unchanged, for CPU tests.
//
// * __global__/__device__ vanish; blockIdx/threadIdx/blockDim/gridDim are thread-local
//   globals that shim_launch() sets before calling the kernel once per (block, thread).
//   The kernels use neither shared memory nor __syncthreads, so a sequential loop over
//   the grid is a faithful execution.
// * __half is GCC's _Float16 (IEEE binary16); conversions round to nearest even, as
//   __float2half_rn does on the device.
// * The *_rn float intrinsics are plain IEEE single-precision operations. Build with
//   -ffp-contract=off (and without -ffast-math) so g++ does not fuse them either.
#pragma once

#include <math.h>
#include <stdint.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

inline thread_local dim3 blockIdx;
inline thread_local dim3 threadIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

typedef _Float16 __half;

inline __half __float2half_rn(float f) { return (__half)f; }
inline float __half2float(__half h) { return (float)h; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline int __float2int_rn(float f) { return (int)nearbyintf(f); }  // ties to even
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

// Run `kernel(args...)` for every thread of every block, in order.
template <typename... Params, typename... Args>
void shim_launch(dim3 grid, dim3 block, void (*kernel)(Params...), Args... args) {
    gridDim = grid;
    blockDim = block;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx)
                for (unsigned tz = 0; tz < block.z; ++tz)
                    for (unsigned ty = 0; ty < block.y; ++ty)
                        for (unsigned tx = 0; tx < block.x; ++tx) {
                            blockIdx = dim3{bx, by, bz};
                            threadIdx = dim3{tx, ty, tz};
                            kernel(static_cast<Params>(args)...);
                        }
}
