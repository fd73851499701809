// edgediff: CUDA kernels for the binary-residual linear / conv ops (docs/methods.md section 2.4).
//
// This header has two halves:
//   * constants shared by the kernels and their callers (always visible, also under NVRTC);
//   * the host launch API used by the TensorRT plugin (hidden under NVRTC, which compiles device
//     code only: CuPy's RawModule compiles residual_binary_kernels.cu with NVRTC).
//
// Op contract (the ONNX node edgediff::ResidualBinaryLinear / ResidualBinaryConv):
//   main weight      W[c, j] = w_scale[c] * (Wq[c, j] - w_zero[c])
//   residual         for k < K, c = channels[k]: W[c, j] += alpha[k] * sign[k, j]
//   sign bits        bit b (LSB first) of byte j of row k is the sign of column 8j+b: 1 -> +1, 0 -> -1
//   output           Y = X . W^T + bias   (conv: the same weight, flattened over Cin/group*kh*kw)
#pragma once

// Linear kernel tile: EDGEDIFF_RBL_BM rows of X by EDGEDIFF_RBL_BN output channels per block,
// stepping EDGEDIFF_RBL_BK input features at a time; 256 threads, 4x4 outputs per thread.
#define EDGEDIFF_RBL_BM 64
#define EDGEDIFF_RBL_BN 64
#define EDGEDIFF_RBL_BK 16
#define EDGEDIFF_RBL_LINEAR_THREADS 256

// Conv kernel: one block computes EDGEDIFF_RBL_CONV_THREADS output pixels of one (n, c) plane and
// stages the dequantized weight row in shared memory in chunks of whole input channels.
#define EDGEDIFF_RBL_CONV_THREADS 256
#define EDGEDIFF_RBL_CONV_CHUNK 2048 // floats; kh*kw must not exceed this

// Threads of the (single-block) kernel that builds the per-output-channel residual map.
#define EDGEDIFF_RBL_MAP_THREADS 256

#if !defined(__CUDACC_RTC__)
#include <cuda_runtime_api.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// Weights of one op, all device pointers. `signs` is read as bytes: element (k, b) of the packed
// sign matrix is the low byte at signs + (k * sign_row_bytes + b) * signs_elem_bytes, so both a
// uint8/int8 tensor (signs_elem_bytes = 1) and the INT32 tensor TensorRT's ONNX parser makes of a
// UINT8 initializer (signs_elem_bytes = 4, little-endian) work. `channels` holds int32
// (channels_elem_bytes = 4) or int64 (8) indices. `bias` may be NULL.
typedef struct EdgediffRblWeights
{
    const signed char* wq;
    const float* w_scale;
    const signed char* w_zero;
    const unsigned char* signs;
    int signs_elem_bytes;
    int sign_row_bytes;
    int num_residual;
    const float* alpha;
    const void* channels;
    int channels_elem_bytes;
    const float* bias;
} EdgediffRblWeights;

// Geometry of a 2-D convolution; pads are top and left (bottom/right only shape out_h/out_w).
typedef struct EdgediffRblConvShape
{
    int batch, in_channels, in_h, in_w;
    int out_channels, out_h, out_w;
    int kernel_h, kernel_w;
    int stride_h, stride_w;
    int pad_top, pad_left;
    int dilation_h, dilation_w;
    int group;
} EdgediffRblConvShape;

// Device workspace (bytes) both launchers need: the int32 map output channel -> k or -1.
size_t edgediff_rbl_workspace_bytes(int out_channels);

// Y[rows, cout] = X[rows, cin] . W^T + bias; X and Y are float (x_is_half = 0) or half (1).
cudaError_t edgediff_rbl_linear(const void* x, int x_is_half, const EdgediffRblWeights* weights, void* y,
    long long rows, int cin, int cout, void* workspace, cudaStream_t stream);

// NCHW convolution with the same weight contract; Wq is [Cout, Cin/group, kh, kw].
cudaError_t edgediff_rbl_conv2d(const void* x, int x_is_half, const EdgediffRblWeights* weights, void* y,
    const EdgediffRblConvShape* shape, void* workspace, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
#endif // !__CUDACC_RTC__
