// Runs the real CUDA kernels of residual_binary_kernels.cu on the CPU, for tests on machines
// without a GPU. The device part of that file is plain C++ apart from a few CUDA keywords, so
// they are mapped here: each CUDA thread is a std::thread, __syncthreads() a std::barrier,
// __shared__ a function-local static (one block runs at a time). The fp16 kernels cannot run:
// their PTX conversion instructions are dropped (asm is defined away), so only the fp32 kernels
// and the channel map are meaningful here.
//
// Build: g++ -std=c++20 -O1 -pthread -shared -fPIC kernel_host_emulation.cpp -I<plugin dir> -o libemu.so
// Call:  emu_launch(name, grid xyz, block xyz, args) with args[i] pointing at the i-th kernel argument
//        (the cuLaunchKernel convention), from Python through ctypes.
#include <barrier>
#include <cstdint>
#include <cstring>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace emu
{
struct Dim3
{
    unsigned int x = 1, y = 1, z = 1;
};
thread_local Dim3 threadIdx;
thread_local Dim3 blockIdx;
Dim3 blockDim;
Dim3 gridDim;
std::barrier<>* gBarrier = nullptr;
} // namespace emu

using emu::blockDim;
using emu::blockIdx;
using emu::gridDim;
using emu::threadIdx;

// CUDA spellings used by the device part of the kernel file.
#define __CUDACC_RTC__ 1 // skip the host launchers (they need the CUDA runtime)
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static
#define __syncthreads() emu::gBarrier->arrive_and_wait()
#define asm(...) ((void) 0)

#include "residual_binary_kernels.cu"

#undef asm
#undef __shared__

namespace
{

template <typename... A, std::size_t... I>
void invoke(void (*kernel)(A...), void** args, std::index_sequence<I...>)
{
    kernel(*static_cast<std::remove_reference_t<A>*>(args[I])...);
}

template <typename... A>
void launch(void (*kernel)(A...), emu::Dim3 grid, emu::Dim3 block, void** args)
{
    gridDim = grid;
    blockDim = block;
    unsigned int const threads = block.x * block.y * block.z;
    for (unsigned int bz = 0; bz < grid.z; ++bz)
    {
        for (unsigned int by = 0; by < grid.y; ++by)
        {
            for (unsigned int bx = 0; bx < grid.x; ++bx)
            {
                std::barrier<> barrier(static_cast<std::ptrdiff_t>(threads));
                emu::gBarrier = &barrier;
                std::vector<std::thread> pool;
                pool.reserve(threads);
                for (unsigned int t = 0; t < threads; ++t)
                {
                    pool.emplace_back([=] {
                        threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                        blockIdx = {bx, by, bz};
                        invoke(kernel, args, std::index_sequence_for<A...>{});
                    });
                }
                for (auto& th : pool)
                {
                    th.join();
                }
            }
        }
    }
}

} // namespace

extern "C" int emu_launch(char const* name, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
    unsigned int by, unsigned int bz, void** args)
{
    emu::Dim3 const grid{gx, gy, gz};
    emu::Dim3 const block{bx, by, bz};
    if (std::strcmp(name, "edgediff_rbl_channel_map") == 0)
    {
        launch(edgediff_rbl_channel_map, grid, block, args);
    }
    else if (std::strcmp(name, "edgediff_rbl_linear_f32") == 0)
    {
        launch(edgediff_rbl_linear_f32, grid, block, args);
    }
    else if (std::strcmp(name, "edgediff_rbl_conv2d_f32") == 0)
    {
        launch(edgediff_rbl_conv2d_f32, grid, block, args);
    }
    else
    {
        return 1; // the fp16 kernels need PTX conversions: not emulated
    }
    return 0;
}
