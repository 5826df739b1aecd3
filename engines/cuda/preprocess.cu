// Fused pre-processing: camera frame (uint8) -> normalised NCHW network input, one pass.
//
// One thread per output pixel (x, y) of the (dst_h, dst_w) network input. Each thread
//   1. maps (x, y) to the source with half-pixel centres, clamped (seg::source_tap),
//   2. reads the four neighbouring source pixels as B, G, R (packed BGR/BGRx, or NV12
//      converted to BGR per tap),
//   3. blends them bilinearly per channel,
//   4. normalises: out = v * scale[c] + shift[c], with v on the 0..255 scale,
//      scale = 1 / (255 * std), shift = -mean / std (per RGB channel),
//   5. writes R, G, B to three planes of dst (C, H, W) as float32 or float16.
//
// Layouts:
//   packed:  src[y * pitch + x * channels + {0: B, 1: G, 2: R}], channels = 3 (BGR) or
//            4 (BGRx); pitch in bytes, may exceed width * channels.
//   NV12:    luma[y * y_pitch + x]; chroma[(y / 2) * uv_pitch + (x / 2) * 2 + {0: U, 1: V}];
//            even width and height; BT.601 limited range ("studio swing", what camera
//            ISPs and hardware decoders emit by default).
//   dst:     (3, dst_h, dst_w) contiguous; the caller offsets the pointer per batch item.
#include "segstream_cuda.cuh"

namespace seg {

struct Bgr {
    float b, g, r;
};

struct PackedSource {
    const uint8_t* data;
    int pitch;
    int channels;

    __device__ __forceinline__ Bgr at(int y, int x) const {
        const uint8_t* p = data + (long long)y * pitch + (long long)x * channels;
        Bgr c;
        c.b = (float)p[0];
        c.g = (float)p[1];
        c.r = (float)p[2];
        return c;
    }
};

// BT.601 limited range YCbCr -> RGB, clamped to 0..255 (not rounded: the blend follows).
struct Nv12Source {
    const uint8_t* luma;
    int y_pitch;
    const uint8_t* chroma;
    int uv_pitch;

    __device__ __forceinline__ Bgr at(int y, int x) const {
        const float yy = mul(sub((float)luma[(long long)y * y_pitch + x], 16.0f), 1.164383f);
        const uint8_t* uv = chroma + (long long)(y >> 1) * uv_pitch + (x >> 1) * 2;
        const float u = sub((float)uv[0], 128.0f);
        const float v = sub((float)uv[1], 128.0f);
        Bgr c;
        c.r = fminf(fmaxf(add(yy, mul(1.596027f, v)), 0.0f), 255.0f);
        c.g = fminf(fmaxf(sub(sub(yy, mul(0.391762f, u)), mul(0.812968f, v)), 0.0f), 255.0f);
        c.b = fminf(fmaxf(add(yy, mul(2.017232f, u)), 0.0f), 255.0f);
        return c;
    }
};

template <typename Source, typename OutT>
__device__ __forceinline__ void preprocess_pixel(
    const Source& src, int src_h, int src_w, OutT* __restrict__ dst, int dst_h, int dst_w,
    float scale_r, float scale_g, float scale_b, float shift_r, float shift_g, float shift_b) {
    const int x = thread_x();
    const int y = thread_y();
    if (x >= dst_w || y >= dst_h) return;
    const Tap ty = source_tap(y, src_h, dst_h);
    const Tap tx = source_tap(x, src_w, dst_w);
    const Bgr p00 = src.at(ty.i0, tx.i0);
    const Bgr p01 = src.at(ty.i0, tx.i1);
    const Bgr p10 = src.at(ty.i1, tx.i0);
    const Bgr p11 = src.at(ty.i1, tx.i1);
    const float r = blend(p00.r, p01.r, p10.r, p11.r, tx.w, ty.w);
    const float g = blend(p00.g, p01.g, p10.g, p11.g, tx.w, ty.w);
    const float b = blend(p00.b, p01.b, p10.b, p11.b, tx.w, ty.w);
    const long long plane = (long long)dst_h * dst_w;
    const long long i = (long long)y * dst_w + x;
    store_f(dst + i, add(mul(r, scale_r), shift_r));              // plane 0: R
    store_f(dst + plane + i, add(mul(g, scale_g), shift_g));      // plane 1: G
    store_f(dst + 2 * plane + i, add(mul(b, scale_b), shift_b));  // plane 2: B
}

}  // namespace seg

#define SEG_NORM_PARAMS \
    float scale_r, float scale_g, float scale_b, float shift_r, float shift_g, float shift_b
#define SEG_NORM_ARGS scale_r, scale_g, scale_b, shift_r, shift_g, shift_b

extern "C" {

// Packed BGR (channels = 3) or BGRx (channels = 4) -> (3, dst_h, dst_w) float32.
__global__ void seg_preprocess_packed_f32(const uint8_t* src, int pitch, int channels,
                                          int src_h, int src_w, float* dst, int dst_h,
                                          int dst_w, SEG_NORM_PARAMS) {
    const seg::PackedSource s{src, pitch, channels};
    seg::preprocess_pixel(s, src_h, src_w, dst, dst_h, dst_w, SEG_NORM_ARGS);
}

// Packed BGR / BGRx -> (3, dst_h, dst_w) float16.
__global__ void seg_preprocess_packed_f16(const uint8_t* src, int pitch, int channels,
                                          int src_h, int src_w, __half* dst, int dst_h,
                                          int dst_w, SEG_NORM_PARAMS) {
    const seg::PackedSource s{src, pitch, channels};
    seg::preprocess_pixel(s, src_h, src_w, dst, dst_h, dst_w, SEG_NORM_ARGS);
}

// NV12 (luma plane + interleaved UV plane at half resolution) -> (3, dst_h, dst_w) float32.
__global__ void seg_preprocess_nv12_f32(const uint8_t* luma, int y_pitch, const uint8_t* chroma,
                                        int uv_pitch, int src_h, int src_w, float* dst,
                                        int dst_h, int dst_w, SEG_NORM_PARAMS) {
    const seg::Nv12Source s{luma, y_pitch, chroma, uv_pitch};
    seg::preprocess_pixel(s, src_h, src_w, dst, dst_h, dst_w, SEG_NORM_ARGS);
}

// NV12 -> (3, dst_h, dst_w) float16.
__global__ void seg_preprocess_nv12_f16(const uint8_t* luma, int y_pitch, const uint8_t* chroma,
                                        int uv_pitch, int src_h, int src_w, __half* dst,
                                        int dst_h, int dst_w, SEG_NORM_PARAMS) {
    const seg::Nv12Source s{luma, y_pitch, chroma, uv_pitch};
    seg::preprocess_pixel(s, src_h, src_w, dst, dst_h, dst_w, SEG_NORM_ARGS);
}

}  // extern "C"

#undef SEG_NORM_PARAMS
#undef SEG_NORM_ARGS
