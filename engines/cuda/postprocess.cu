// Fused post-processing: low-resolution logits -> uint8 label map at source resolution.
//
// One thread per output pixel (x, y) of the (out_h, out_w) label map. The thread finds its
// four source taps in the (h, w) logit grid once (half-pixel centres, clamped), then for
// each class c = 0..K-1 reads the four logits of plane c, blends them bilinearly and keeps
// the running maximum. Full-resolution logits never exist in memory: the cost is 4*K
// reads per output pixel, served mostly from L1/L2 because neighbouring threads share taps.
//
// Ties resolve to the lowest class id (strict '>' while scanning c upwards), like
// numpy.argmax. Arithmetic is float32 with no FMA contraction (see segstream_cuda.cuh);
// NaN logits give an unspecified label.
//
// Layouts:
//   logits: (K, h, w) contiguous float32 or float16; the caller offsets per batch item.
//   labels: labels[y * out_pitch + x] uint8, out_pitch >= out_w bytes; K <= 256.
#include "segstream_cuda.cuh"

namespace seg {

template <typename InT>
__device__ __forceinline__ void upsample_argmax_pixel(const InT* __restrict__ logits, int k,
                                                      int h, int w, uint8_t* __restrict__ labels,
                                                      int out_pitch, int out_h, int out_w) {
    const int x = thread_x();
    const int y = thread_y();
    if (x >= out_w || y >= out_h) return;
    const Tap ty = source_tap(y, h, out_h);
    const Tap tx = source_tap(x, w, out_w);
    const long long plane = (long long)h * w;
    const long long i00 = (long long)ty.i0 * w + tx.i0;
    const long long i01 = (long long)ty.i0 * w + tx.i1;
    const long long i10 = (long long)ty.i1 * w + tx.i0;
    const long long i11 = (long long)ty.i1 * w + tx.i1;
    float best = 0.0f;
    int best_c = 0;
    for (int c = 0; c < k; ++c) {
        const InT* p = logits + c * plane;
        const float v = blend(load_f(p + i00), load_f(p + i01), load_f(p + i10),
                              load_f(p + i11), tx.w, ty.w);
        if (c == 0 || v > best) {
            best = v;
            best_c = c;
        }
    }
    labels[(long long)y * out_pitch + x] = (uint8_t)best_c;
}

}  // namespace seg

extern "C" {

// (K, h, w) float32 logits -> (out_h, out_w) uint8 labels.
__global__ void seg_upsample_argmax_f32(const float* logits, int k, int h, int w,
                                        uint8_t* labels, int out_pitch, int out_h, int out_w) {
    seg::upsample_argmax_pixel(logits, k, h, w, labels, out_pitch, out_h, out_w);
}

// (K, h, w) float16 logits -> (out_h, out_w) uint8 labels (blend in float32).
__global__ void seg_upsample_argmax_f16(const __half* logits, int k, int h, int w,
                                        uint8_t* labels, int out_pitch, int out_h, int out_w) {
    seg::upsample_argmax_pixel(logits, k, h, w, labels, out_pitch, out_h, out_w);
}

}  // extern "C"
