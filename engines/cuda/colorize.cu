// Label map -> colour image, and colour overlay on the camera frame. One thread per pixel.
//
// Layouts:
//   labels:  labels[y * label_pitch + x] uint8 at (label_h, label_w).
//   palette: (256, 3) uint8 RGB, contiguous (ModelSpec.palette()); ids past the class
//            table are black.
//   frame / out: packed BGR uint8, frame[y * pitch + x * 3 + {0: B, 1: G, 2: R}].
//
// seg_overlay blends out = round_half_even(frame * (1 - alpha) + colour * alpha) in float32
// with no FMA, saturated to 0..255 (cv2.addWeighted's rounding). When the label map is
// smaller than the frame it is sampled nearest-neighbour: src = floor(dst * in / out).
#include "segstream_cuda.cuh"

namespace seg {

__device__ __forceinline__ int nearest_src(int dst, int in_size, int out_size) {
    const int s = (int)(((long long)dst * in_size) / out_size);
    return s < in_size - 1 ? s : in_size - 1;
}

__device__ __forceinline__ uint8_t saturate_u8(float v) {
    const int i = __float2int_rn(v);
    return (uint8_t)(i < 0 ? 0 : (i > 255 ? 255 : i));
}

}  // namespace seg

extern "C" {

// (h, w) labels -> (h, w, 3) BGR colours.
__global__ void seg_colorize(const uint8_t* labels, int label_pitch, int h, int w,
                             const uint8_t* palette, uint8_t* out, int out_pitch) {
    const int x = seg::thread_x();
    const int y = seg::thread_y();
    if (x >= w || y >= h) return;
    const uint8_t* rgb = palette + 3 * labels[(long long)y * label_pitch + x];
    uint8_t* o = out + (long long)y * out_pitch + 3LL * x;
    o[0] = rgb[2];
    o[1] = rgb[1];
    o[2] = rgb[0];
}

// Labels (label_h, label_w) coloured and blended over the BGR frame (h, w) -> out (h, w, 3).
__global__ void seg_overlay(const uint8_t* labels, int label_pitch, int label_h, int label_w,
                            const uint8_t* palette, const uint8_t* frame, int frame_pitch,
                            int h, int w, float alpha, uint8_t* out, int out_pitch) {
    const int x = seg::thread_x();
    const int y = seg::thread_y();
    if (x >= w || y >= h) return;
    const int ly = seg::nearest_src(y, label_h, h);
    const int lx = seg::nearest_src(x, label_w, w);
    const uint8_t* rgb = palette + 3 * labels[(long long)ly * label_pitch + lx];
    const uint8_t* f = frame + (long long)y * frame_pitch + 3LL * x;
    uint8_t* o = out + (long long)y * out_pitch + 3LL * x;
    const float keep = seg::sub(1.0f, alpha);
    for (int c = 0; c < 3; ++c) {
        const float v = seg::add(seg::mul((float)f[c], keep), seg::mul((float)rgb[2 - c], alpha));
        o[c] = seg::saturate_u8(v);
    }
}

}  // extern "C"
