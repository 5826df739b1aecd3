// Shared device helpers for the segstream kernels (preprocess.cu, postprocess.cu, colorize.cu).
//
// The same source is compiled two ways:
//   * by nvcc / NVRTC (pycuda SourceModule) for the GPU, and
//   * by g++ through hostshim.h for CPU verification of the kernels' own arithmetic.
//
// Floating-point rule: every float operation that the NumPy references also perform goes
// through the *_rn intrinsics below, so nvcc cannot contract a*b+c into an FMA. With that,
// a kernel's float32 result is bit-identical to the same sequence of NumPy float32 ops.
#pragma once

#ifdef __CUDACC__
#include <cuda_fp16.h>
#include <stdint.h>
#else
#include "hostshim.h"
#endif

namespace seg {

__device__ __forceinline__ float add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float sub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ float mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float div(float a, float b) { return __fdiv_rn(a, b); }

// One axis of a half-pixel-centre bilinear sample: source indices i0, i1 and the weight
// of i1. Same arithmetic as engines.preprocess.resize_bilinear_ref:
//   s = clamp((dst + 0.5) * (in / out) - 0.5, 0, in - 1);  i0 = floor(s);  w = s - i0.
struct Tap {
    int i0;
    int i1;
    float w;
};

__device__ __forceinline__ Tap source_tap(int dst, int in_size, int out_size) {
    const float scale = div((float)in_size, (float)out_size);
    float s = sub(mul(add((float)dst, 0.5f), scale), 0.5f);
    s = fminf(fmaxf(s, 0.0f), (float)(in_size - 1));
    Tap t;
    t.i0 = (int)floorf(s);
    t.i1 = t.i0 + 1 < in_size ? t.i0 + 1 : in_size - 1;
    t.w = sub(s, (float)t.i0);  // exact: the fraction of a float is representable
    return t;
}

// Bilinear blend of the four taps a[y][x], in the reference's order of operations.
__device__ __forceinline__ float blend(float a00, float a01, float a10, float a11,
                                       float wx, float wy) {
    const float ox = sub(1.0f, wx);
    const float oy = sub(1.0f, wy);
    const float top = add(mul(a00, ox), mul(a01, wx));
    const float bot = add(mul(a10, ox), mul(a11, wx));
    return add(mul(top, oy), mul(bot, wy));
}

__device__ __forceinline__ float load_f(const float* p) { return *p; }
__device__ __forceinline__ float load_f(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ void store_f(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_f(__half* p, float v) { *p = __float2half_rn(v); }

// 2-D thread coordinates of this output pixel.
__device__ __forceinline__ int thread_x() { return (int)(blockIdx.x * blockDim.x + threadIdx.x); }
__device__ __forceinline__ int thread_y() { return (int)(blockIdx.y * blockDim.y + threadIdx.y); }

}  // namespace seg
