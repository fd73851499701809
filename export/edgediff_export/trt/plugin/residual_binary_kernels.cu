// edgediff: CUDA kernels for edgediff::ResidualBinaryLinear and edgediff::ResidualBinaryConv.
//
// The same file serves two callers:
//   * the TensorRT plugin (compiled with nvcc into libedgediff_trt_plugins.so), through the host
//     launchers at the bottom (declared in residual_binary_kernels.cuh);
//   * tests and gpu_check.py, through CuPy's RawModule (NVRTC), which sees only the extern "C"
//     __global__ kernels: the device part below includes no header at all (half <-> float is
//     done with two PTX instructions), so NVRTC needs no include path.
//
// Design (correctness first; see docs/tensorrt.md for the faster version):
//   * every output channel c has k = chan_map[c] (its row in signs/alpha) or -1; a one-block
//     kernel builds that map from `channels` (int32 or int64) into the plugin workspace;
//   * the residual is folded into the weight while it is dequantized into shared memory:
//     W[c, j] = w_scale[c] * (Wq[c, j] - w_zero[c]) + (k >= 0 ? alpha[k] * sign[k, j] : 0),
//     so the binary branch costs no extra multiply-adds, only one bit read per staged weight;
//   * linear: a 64x64 output tile per block, 16 input features per step, 4x4 outputs per
//     thread, fp32 accumulation for float and half inputs, bias added in the epilogue;
//   * conv: direct convolution, one output pixel per thread and one (n, c) plane per block
//     column, the dequantized weight row of c staged in shared memory chunk by chunk.

#include "residual_binary_kernels.cuh"

// ---------------------------------------------------------------------------------------------
// Device part (NVRTC-safe: no includes, no host code).
// ---------------------------------------------------------------------------------------------

// 16-byte vector of the shared-memory tiles (own type: the device part includes no CUDA header).
struct alignas(16) EdgediffRblF4
{
    float x, y, z, w;
};

__device__ __forceinline__ float edgediff_rbl_load(const float* p, long long i)
{
    return p[i];
}

__device__ __forceinline__ float edgediff_rbl_load(const unsigned short* p, long long i)
{
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(p[i]));
    return f;
}

__device__ __forceinline__ void edgediff_rbl_store(float* p, long long i, float v)
{
    p[i] = v;
}

__device__ __forceinline__ void edgediff_rbl_store(unsigned short* p, long long i, float v)
{
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    p[i] = h;
}

// alpha[k] * sign of column j of residual row k (j indexes the flattened weight row).
__device__ __forceinline__ float edgediff_rbl_residual(const unsigned char* signs, int signs_elem_bytes,
    int sign_row_bytes, const float* alpha, int k, long long j)
{
    const long long byte_index = (long long) k * sign_row_bytes + (j >> 3);
    const unsigned int byte = signs[byte_index * signs_elem_bytes];
    return ((byte >> (unsigned int) (j & 7)) & 1u) ? alpha[k] : -alpha[k];
}

// chan_map[c] = k if channels[k] == c, else -1. Launch with one block.
extern "C" __global__ void edgediff_rbl_channel_map(const unsigned char* channels, int channels_elem_bytes,
    int num_residual, int cout, int* chan_map)
{
    for (int c = threadIdx.x; c < cout; c += blockDim.x)
    {
        chan_map[c] = -1;
    }
    __syncthreads();
    for (int k = threadIdx.x; k < num_residual; k += blockDim.x)
    {
        long long c;
        if (channels_elem_bytes == 8)
        {
            c = reinterpret_cast<const long long*>(channels)[k];
        }
        else
        {
            c = reinterpret_cast<const int*>(channels)[k];
        }
        if (c >= 0 && c < cout)
        {
            chan_map[c] = k;
        }
    }
}

template <typename T>
__device__ __forceinline__ void edgediff_rbl_linear_impl(const T* __restrict__ x, const signed char* __restrict__ wq,
    const float* __restrict__ w_scale, const signed char* __restrict__ w_zero, const unsigned char* __restrict__ signs,
    int signs_elem_bytes, int sign_row_bytes, const float* __restrict__ alpha, const int* __restrict__ chan_map,
    const float* __restrict__ bias, int has_bias, T* __restrict__ y, long long rows, int cin, int cout)
{
    constexpr int BM = EDGEDIFF_RBL_BM;
    constexpr int BN = EDGEDIFF_RBL_BN;
    constexpr int BK = EDGEDIFF_RBL_BK;
    constexpr int NT = EDGEDIFF_RBL_LINEAR_THREADS;
    constexpr int PAD = 4; // keeps 16-byte row alignment and makes the transposed tile stores 2-way at worst
    static_assert(BM * BK == 4 * NT && BN * BK == 4 * NT, "each thread stages 4 elements of each tile");
    static_assert(BM == 16 * 4 && BN == 16 * 4, "16x16 threads, 4x4 outputs each");

    struct alignas(16) Tiles
    {
        float a[BK][BM + PAD]; // X tile, k-major
        float b[BK][BN + PAD]; // dequantized W tile (+ residual), k-major
    };
    __shared__ Tiles tiles;
    __shared__ float col_scale[BN];
    __shared__ float col_zero[BN];
    __shared__ float col_alpha[BN];
    __shared__ int col_k[BN];

    const int tid = threadIdx.x;
    const long long m0 = (long long) blockIdx.x * BM;
    const int n0 = blockIdx.y * BN;

    if (tid < BN)
    {
        const int c = n0 + tid;
        float scale = 0.0f;
        float zero = 0.0f;
        float a = 0.0f;
        int k = -1;
        if (c < cout)
        {
            scale = w_scale[c];
            zero = (float) w_zero[c];
            k = chan_map[c];
            if (k >= 0)
            {
                a = alpha[k];
            }
        }
        col_scale[tid] = scale;
        col_zero[tid] = zero;
        col_alpha[tid] = a;
        col_k[tid] = k;
    }

    const int tx = tid % 16; // output columns n0 + 4*tx .. +3
    const int ty = tid / 16; // output rows    m0 + 4*ty .. +3
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
    {
#pragma unroll
        for (int j = 0; j < 4; ++j)
        {
            acc[i][j] = 0.0f;
        }
    }

    for (int k0 = 0; k0 < cin; k0 += BK)
    {
        __syncthreads(); // previous tile consumed; column parameters visible on the first step
#pragma unroll
        for (int i = 0; i < 4; ++i)
        {
            const int e = tid + i * NT;
            const int r = e / BK;
            const int kk = e % BK;
            const long long m = m0 + r;
            const int j = k0 + kk;
            float v = 0.0f;
            if (m < rows && j < cin)
            {
                v = edgediff_rbl_load(x, m * cin + j);
            }
            tiles.a[kk][r] = v;
        }
#pragma unroll
        for (int i = 0; i < 4; ++i)
        {
            const int e = tid + i * NT;
            const int n = e / BK;
            const int kk = e % BK;
            const int c = n0 + n;
            const int j = k0 + kk;
            float w = 0.0f;
            if (c < cout && j < cin)
            {
                w = col_scale[n] * ((float) wq[(long long) c * cin + j] - col_zero[n]);
                const int k = col_k[n];
                if (k >= 0)
                {
                    const long long byte_index = (long long) k * sign_row_bytes + (j >> 3);
                    const unsigned int byte = signs[byte_index * signs_elem_bytes];
                    w += ((byte >> (unsigned int) (j & 7)) & 1u) ? col_alpha[n] : -col_alpha[n];
                }
            }
            tiles.b[kk][n] = w;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; ++kk)
        {
            const EdgediffRblF4 a = *reinterpret_cast<const EdgediffRblF4*>(&tiles.a[kk][4 * ty]);
            const EdgediffRblF4 b = *reinterpret_cast<const EdgediffRblF4*>(&tiles.b[kk][4 * tx]);
            const float av[4] = {a.x, a.y, a.z, a.w};
            const float bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
            for (int i = 0; i < 4; ++i)
            {
#pragma unroll
                for (int j = 0; j < 4; ++j)
                {
                    acc[i][j] += av[i] * bv[j]; // contracted to FMA (fmad is on by default)
                }
            }
        }
    }

#pragma unroll
    for (int i = 0; i < 4; ++i)
    {
        const long long m = m0 + 4 * ty + i;
        if (m >= rows)
        {
            continue;
        }
#pragma unroll
        for (int j = 0; j < 4; ++j)
        {
            const int c = n0 + 4 * tx + j;
            if (c < cout)
            {
                const float b = has_bias ? bias[c] : 0.0f;
                edgediff_rbl_store(y, m * cout + c, acc[i][j] + b);
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(EDGEDIFF_RBL_LINEAR_THREADS) edgediff_rbl_linear_f32(const float* x,
    const signed char* wq, const float* w_scale, const signed char* w_zero, const unsigned char* signs,
    int signs_elem_bytes, int sign_row_bytes, const float* alpha, const int* chan_map, const float* bias, int has_bias,
    float* y, long long rows, int cin, int cout)
{
    edgediff_rbl_linear_impl<float>(x, wq, w_scale, w_zero, signs, signs_elem_bytes, sign_row_bytes, alpha, chan_map,
        bias, has_bias, y, rows, cin, cout);
}

extern "C" __global__ void __launch_bounds__(EDGEDIFF_RBL_LINEAR_THREADS) edgediff_rbl_linear_f16(
    const unsigned short* x, const signed char* wq, const float* w_scale, const signed char* w_zero,
    const unsigned char* signs, int signs_elem_bytes, int sign_row_bytes, const float* alpha, const int* chan_map,
    const float* bias, int has_bias, unsigned short* y, long long rows, int cin, int cout)
{
    edgediff_rbl_linear_impl<unsigned short>(x, wq, w_scale, w_zero, signs, signs_elem_bytes, sign_row_bytes, alpha,
        chan_map, bias, has_bias, y, rows, cin, cout);
}

template <typename T>
__device__ __forceinline__ void edgediff_rbl_conv2d_impl(const T* __restrict__ x, const signed char* __restrict__ wq,
    const float* __restrict__ w_scale, const signed char* __restrict__ w_zero, const unsigned char* __restrict__ signs,
    int signs_elem_bytes, int sign_row_bytes, const float* __restrict__ alpha, const int* __restrict__ chan_map,
    const float* __restrict__ bias, int has_bias, T* __restrict__ y, int cin, int in_h, int in_w, int cout, int out_h,
    int out_w, int kh, int kw, int sh, int sw, int pt, int pl, int dh, int dw, int group)
{
    __shared__ float w_row[EDGEDIFF_RBL_CONV_CHUNK];

    const int c = blockIdx.y;
    const int n = blockIdx.z;
    const int cin_pg = cin / group;
    const int cout_pg = cout / group;
    const int ci0 = (c / cout_pg) * cin_pg;
    const int khw = kh * kw;
    const long long row_len = (long long) cin_pg * khw;
    const int chans_per_chunk = EDGEDIFF_RBL_CONV_CHUNK / khw;

    const float scale = w_scale[c];
    const float zero = (float) w_zero[c];
    const int k = chan_map[c];

    const int p = blockIdx.x * blockDim.x + threadIdx.x;
    const bool active = p < out_h * out_w;
    const int oy = active ? p / out_w : 0;
    const int ox = active ? p % out_w : 0;
    const int iy0 = oy * sh - pt;
    const int ix0 = ox * sw - pl;

    float acc = 0.0f;
    for (int cb = 0; cb < cin_pg; cb += chans_per_chunk)
    {
        const int nc = cin_pg - cb < chans_per_chunk ? cin_pg - cb : chans_per_chunk;
        const int len = nc * khw;
        __syncthreads(); // previous chunk consumed
        for (int i = threadIdx.x; i < len; i += blockDim.x)
        {
            const long long j = (long long) cb * khw + i; // index in the flattened weight row
            float w = scale * ((float) wq[(long long) c * row_len + j] - zero);
            if (k >= 0)
            {
                w += edgediff_rbl_residual(signs, signs_elem_bytes, sign_row_bytes, alpha, k, j);
            }
            w_row[i] = w;
        }
        __syncthreads();
        if (active)
        {
            for (int cc = 0; cc < nc; ++cc)
            {
                const long long plane = ((long long) n * cin + ci0 + cb + cc) * in_h;
                const float* wc = w_row + cc * khw;
                for (int dy = 0; dy < kh; ++dy)
                {
                    const int iy = iy0 + dy * dh;
                    if (iy < 0 || iy >= in_h)
                    {
                        continue;
                    }
                    const long long xrow = (plane + iy) * in_w;
                    for (int dx = 0; dx < kw; ++dx)
                    {
                        const int ix = ix0 + dx * dw;
                        if (ix >= 0 && ix < in_w)
                        {
                            acc += edgediff_rbl_load(x, xrow + ix) * wc[dy * kw + dx];
                        }
                    }
                }
            }
        }
    }
    if (active)
    {
        const float b = has_bias ? bias[c] : 0.0f;
        edgediff_rbl_store(y, (((long long) n * cout + c) * out_h + oy) * out_w + ox, acc + b);
    }
}

extern "C" __global__ void __launch_bounds__(EDGEDIFF_RBL_CONV_THREADS) edgediff_rbl_conv2d_f32(const float* x,
    const signed char* wq, const float* w_scale, const signed char* w_zero, const unsigned char* signs,
    int signs_elem_bytes, int sign_row_bytes, const float* alpha, const int* chan_map, const float* bias, int has_bias,
    float* y, int cin, int in_h, int in_w, int cout, int out_h, int out_w, int kh, int kw, int sh, int sw, int pt, int pl,
    int dh, int dw, int group)
{
    edgediff_rbl_conv2d_impl<float>(x, wq, w_scale, w_zero, signs, signs_elem_bytes, sign_row_bytes, alpha, chan_map,
        bias, has_bias, y, cin, in_h, in_w, cout, out_h, out_w, kh, kw, sh, sw, pt, pl, dh, dw, group);
}

extern "C" __global__ void __launch_bounds__(EDGEDIFF_RBL_CONV_THREADS) edgediff_rbl_conv2d_f16(
    const unsigned short* x, const signed char* wq, const float* w_scale, const signed char* w_zero,
    const unsigned char* signs, int signs_elem_bytes, int sign_row_bytes, const float* alpha, const int* chan_map,
    const float* bias, int has_bias, unsigned short* y, int cin, int in_h, int in_w, int cout, int out_h, int out_w,
    int kh, int kw, int sh, int sw, int pt, int pl, int dh, int dw, int group)
{
    edgediff_rbl_conv2d_impl<unsigned short>(x, wq, w_scale, w_zero, signs, signs_elem_bytes, sign_row_bytes, alpha,
        chan_map, bias, has_bias, y, cin, in_h, in_w, cout, out_h, out_w, kh, kw, sh, sw, pt, pl, dh, dw, group);
}

// ---------------------------------------------------------------------------------------------
// Host part: launchers for the TensorRT plugin (nvcc only).
// ---------------------------------------------------------------------------------------------
#if !defined(__CUDACC_RTC__)

namespace
{

size_t alignUp(size_t bytes, size_t alignment)
{
    return (bytes + alignment - 1) / alignment * alignment;
}

bool validWeights(const EdgediffRblWeights* w)
{
    if (w == nullptr || w->wq == nullptr || w->w_scale == nullptr || w->w_zero == nullptr)
    {
        return false;
    }
    if (w->num_residual < 0 || (w->signs_elem_bytes != 1 && w->signs_elem_bytes != 4)
        || (w->channels_elem_bytes != 4 && w->channels_elem_bytes != 8))
    {
        return false;
    }
    return w->num_residual == 0 || (w->signs != nullptr && w->alpha != nullptr && w->channels != nullptr);
}

cudaError_t buildChannelMap(const EdgediffRblWeights* w, int cout, int* map, cudaStream_t stream)
{
    edgediff_rbl_channel_map<<<1, EDGEDIFF_RBL_MAP_THREADS, 0, stream>>>(
        static_cast<const unsigned char*>(w->channels), w->channels_elem_bytes, w->num_residual, cout, map);
    return cudaGetLastError();
}

} // namespace

extern "C" size_t edgediff_rbl_workspace_bytes(int out_channels)
{
    return alignUp(sizeof(int) * static_cast<size_t>(out_channels > 0 ? out_channels : 1), 256);
}

extern "C" cudaError_t edgediff_rbl_linear(const void* x, int x_is_half, const EdgediffRblWeights* w, void* y,
    long long rows, int cin, int cout, void* workspace, cudaStream_t stream)
{
    if (!validWeights(w) || workspace == nullptr || rows < 0 || cin <= 0 || cout <= 0)
    {
        return cudaErrorInvalidValue;
    }
    if (w->num_residual > 0 && w->sign_row_bytes < (cin + 7) / 8)
    {
        return cudaErrorInvalidValue;
    }
    const long long col_tiles = (cout + EDGEDIFF_RBL_BN - 1) / EDGEDIFF_RBL_BN;
    const long long row_tiles = (rows + EDGEDIFF_RBL_BM - 1) / EDGEDIFF_RBL_BM;
    if (col_tiles > 65535 || row_tiles > 0x7fffffffLL)
    {
        return cudaErrorInvalidConfiguration;
    }
    if (rows == 0)
    {
        return cudaSuccess;
    }
    int* map = static_cast<int*>(workspace);
    cudaError_t status = buildChannelMap(w, cout, map, stream);
    if (status != cudaSuccess)
    {
        return status;
    }
    const dim3 grid(static_cast<unsigned int>(row_tiles), static_cast<unsigned int>(col_tiles));
    const dim3 block(EDGEDIFF_RBL_LINEAR_THREADS);
    const int has_bias = w->bias != nullptr ? 1 : 0;
    if (x_is_half)
    {
        edgediff_rbl_linear_f16<<<grid, block, 0, stream>>>(static_cast<const unsigned short*>(x), w->wq, w->w_scale,
            w->w_zero, w->signs, w->signs_elem_bytes, w->sign_row_bytes, w->alpha, map, w->bias, has_bias,
            static_cast<unsigned short*>(y), rows, cin, cout);
    }
    else
    {
        edgediff_rbl_linear_f32<<<grid, block, 0, stream>>>(static_cast<const float*>(x), w->wq, w->w_scale, w->w_zero,
            w->signs, w->signs_elem_bytes, w->sign_row_bytes, w->alpha, map, w->bias, has_bias, static_cast<float*>(y),
            rows, cin, cout);
    }
    return cudaGetLastError();
}

extern "C" cudaError_t edgediff_rbl_conv2d(const void* x, int x_is_half, const EdgediffRblWeights* w, void* y,
    const EdgediffRblConvShape* s, void* workspace, cudaStream_t stream)
{
    if (!validWeights(w) || s == nullptr || workspace == nullptr)
    {
        return cudaErrorInvalidValue;
    }
    if (s->batch < 0 || s->in_channels <= 0 || s->out_channels <= 0 || s->group <= 0
        || s->in_channels % s->group != 0 || s->out_channels % s->group != 0 || s->kernel_h <= 0
        || s->kernel_w <= 0 || s->kernel_h * s->kernel_w > EDGEDIFF_RBL_CONV_CHUNK || s->stride_h <= 0
        || s->stride_w <= 0 || s->dilation_h <= 0 || s->dilation_w <= 0 || s->out_h < 0 || s->out_w < 0)
    {
        return cudaErrorInvalidValue;
    }
    const long long row_len = static_cast<long long>(s->in_channels / s->group) * s->kernel_h * s->kernel_w;
    if (w->num_residual > 0 && w->sign_row_bytes < (row_len + 7) / 8)
    {
        return cudaErrorInvalidValue;
    }
    const long long pixels = static_cast<long long>(s->out_h) * s->out_w;
    const long long pixel_blocks = (pixels + EDGEDIFF_RBL_CONV_THREADS - 1) / EDGEDIFF_RBL_CONV_THREADS;
    if (s->out_channels > 65535 || s->batch > 65535 || pixels > 0x7fffffffLL)
    {
        return cudaErrorInvalidConfiguration;
    }
    if (s->batch == 0 || pixels == 0)
    {
        return cudaSuccess;
    }
    int* map = static_cast<int*>(workspace);
    cudaError_t status = buildChannelMap(w, s->out_channels, map, stream);
    if (status != cudaSuccess)
    {
        return status;
    }
    const dim3 grid(static_cast<unsigned int>(pixel_blocks), static_cast<unsigned int>(s->out_channels),
        static_cast<unsigned int>(s->batch));
    const dim3 block(EDGEDIFF_RBL_CONV_THREADS);
    const int has_bias = w->bias != nullptr ? 1 : 0;
    if (x_is_half)
    {
        edgediff_rbl_conv2d_f16<<<grid, block, 0, stream>>>(static_cast<const unsigned short*>(x), w->wq, w->w_scale,
            w->w_zero, w->signs, w->signs_elem_bytes, w->sign_row_bytes, w->alpha, map, w->bias, has_bias,
            static_cast<unsigned short*>(y), s->in_channels, s->in_h, s->in_w, s->out_channels, s->out_h, s->out_w,
            s->kernel_h, s->kernel_w, s->stride_h, s->stride_w, s->pad_top, s->pad_left, s->dilation_h,
            s->dilation_w, s->group);
    }
    else
    {
        edgediff_rbl_conv2d_f32<<<grid, block, 0, stream>>>(static_cast<const float*>(x), w->wq, w->w_scale,
            w->w_zero, w->signs, w->signs_elem_bytes, w->sign_row_bytes, w->alpha, map, w->bias, has_bias,
            static_cast<float*>(y), s->in_channels, s->in_h, s->in_w, s->out_channels, s->out_h, s->out_w,
            s->kernel_h, s->kernel_w, s->stride_h, s->stride_w, s->pad_top, s->pad_left, s->dilation_h,
            s->dilation_w, s->group);
    }
    return cudaGetLastError();
}

#endif // !__CUDACC_RTC__
