// CPU build of the segstream CUDA kernels for tests: g++ compiles the very same .cu files
// through hostshim.h and exposes one extern "C" launcher per kernel for ctypes. Each
// launcher takes the grid and block size first, then the kernel's own arguments.
//
//   g++ -std=c++17 -O2 -ffp-contract=off -fPIC -shared -x c++ hostshim.cpp -o libsegshim.so
#include "hostshim.h"

#include "colorize.cu"
#include "postprocess.cu"
#include "preprocess.cu"

#define SHIM_GRID unsigned gx, unsigned gy, unsigned bx, unsigned by
#define SHIM_DIMS dim3{gx, gy, 1}, dim3{bx, by, 1}
#define NORM_P float sr, float sg, float sb, float hr, float hg, float hb
#define NORM_A sr, sg, sb, hr, hg, hb

extern "C" {

void shim_preprocess_packed_f32(SHIM_GRID, const uint8_t* src, int pitch, int channels,
                                int src_h, int src_w, float* dst, int dst_h, int dst_w,
                                NORM_P) {
    shim_launch(SHIM_DIMS, seg_preprocess_packed_f32, src, pitch, channels, src_h, src_w, dst,
                dst_h, dst_w, NORM_A);
}

void shim_preprocess_packed_f16(SHIM_GRID, const uint8_t* src, int pitch, int channels,
                                int src_h, int src_w, __half* dst, int dst_h, int dst_w,
                                NORM_P) {
    shim_launch(SHIM_DIMS, seg_preprocess_packed_f16, src, pitch, channels, src_h, src_w, dst,
                dst_h, dst_w, NORM_A);
}

void shim_preprocess_nv12_f32(SHIM_GRID, const uint8_t* luma, int y_pitch, const uint8_t* chroma,
                              int uv_pitch, int src_h, int src_w, float* dst, int dst_h,
                              int dst_w, NORM_P) {
    shim_launch(SHIM_DIMS, seg_preprocess_nv12_f32, luma, y_pitch, chroma, uv_pitch, src_h,
                src_w, dst, dst_h, dst_w, NORM_A);
}

void shim_preprocess_nv12_f16(SHIM_GRID, const uint8_t* luma, int y_pitch, const uint8_t* chroma,
                              int uv_pitch, int src_h, int src_w, __half* dst, int dst_h,
                              int dst_w, NORM_P) {
    shim_launch(SHIM_DIMS, seg_preprocess_nv12_f16, luma, y_pitch, chroma, uv_pitch, src_h,
                src_w, dst, dst_h, dst_w, NORM_A);
}

void shim_upsample_argmax_f32(SHIM_GRID, const float* logits, int k, int h, int w,
                              uint8_t* labels, int out_pitch, int out_h, int out_w) {
    shim_launch(SHIM_DIMS, seg_upsample_argmax_f32, logits, k, h, w, labels, out_pitch, out_h,
                out_w);
}

void shim_upsample_argmax_f16(SHIM_GRID, const __half* logits, int k, int h, int w,
                              uint8_t* labels, int out_pitch, int out_h, int out_w) {
    shim_launch(SHIM_DIMS, seg_upsample_argmax_f16, logits, k, h, w, labels, out_pitch, out_h,
                out_w);
}

void shim_colorize(SHIM_GRID, const uint8_t* labels, int label_pitch, int h, int w,
                   const uint8_t* palette, uint8_t* out, int out_pitch) {
    shim_launch(SHIM_DIMS, seg_colorize, labels, label_pitch, h, w, palette, out, out_pitch);
}

void shim_overlay(SHIM_GRID, const uint8_t* labels, int label_pitch, int label_h, int label_w,
                  const uint8_t* palette, const uint8_t* frame, int frame_pitch, int h, int w,
                  float alpha, uint8_t* out, int out_pitch) {
    shim_launch(SHIM_DIMS, seg_overlay, labels, label_pitch, label_h, label_w, palette, frame,
                frame_pitch, h, w, alpha, out, out_pitch);
}

}  // extern "C"
