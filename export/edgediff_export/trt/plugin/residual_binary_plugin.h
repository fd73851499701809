// edgediff: TensorRT 10 IPluginV3 plugins for edgediff::ResidualBinaryLinear / ResidualBinaryConv.
//
// Plugin name "ResidualBinaryLinear" / "ResidualBinaryConv", version "1", namespace "edgediff":
// TensorRT's ONNX parser finds them from the node op_type and its plugin_version /
// plugin_namespace attributes. Node attributes arrive as PluginFields (ONNX INT -> kINT32,
// INTS -> kINT32 array); the weights arrive as plugin inputs (constants):
//
//   0 X          float/half [..., Cin] (linear) or [N, Cin, H, W] (conv)
//   1 Wq         int8  [Cout, Cin] or [Cout, Cin/group, kh, kw]
//   2 w_scale    float [Cout]
//   3 w_zero     int8  [Cout]
//   4 signs      int32 (the parser turns a UINT8 initializer into INT32) or int8 bytes,
//                [K, ceil(row/8)], bit b of byte j = sign of column 8j+b (1 -> +1, 0 -> -1)
//   5 alpha      float [K]
//   6 channels   int64 or int32 [K], sorted unique output channels with a residual
//   7 bias       float [Cout], optional (leave the input out: 7 inputs = no bias)
//   output Y     same type as X, [..., Cout] or [N, Cout, Ho, Wo]
//
// The library exports getCreators() and setLoggerFinder() for IPluginRegistry::loadLibrary
// (trtexec --dynamicPlugins, tensorrt.get_plugin_registry().load_library). It registers nothing
// from a static initializer: loadLibrary refuses creators that are already registered.
#pragma once

#include "NvInferRuntime.h"
#include "residual_binary_kernels.cuh"

#include <cstdint>
#include <string>
#include <vector>

namespace edgediff
{
namespace trt
{

constexpr char const* kPLUGIN_NAMESPACE = "edgediff";
constexpr char const* kPLUGIN_VERSION = "1";
constexpr char const* kLINEAR_PLUGIN_NAME = "ResidualBinaryLinear";
constexpr char const* kCONV_PLUGIN_NAME = "ResidualBinaryConv";

// Input positions of both ops.
enum Input : int32_t
{
    kX = 0,
    kWQ = 1,
    kW_SCALE = 2,
    kW_ZERO = 3,
    kSIGNS = 4,
    kALPHA = 5,
    kCHANNELS = 6,
    kBIAS = 7
};

constexpr int32_t kMIN_INPUTS = 7;
constexpr int32_t kMAX_INPUTS = 8;

// What the two plugins share: capabilities, I/O types, workspace, the weight descriptor.
class ResidualBinaryPluginBase : public nvinfer1::IPluginV3,
                                 public nvinfer1::IPluginV3OneCore,
                                 public nvinfer1::IPluginV3OneBuild,
                                 public nvinfer1::IPluginV3OneRuntime
{
public:
    ResidualBinaryPluginBase() = default;
    ResidualBinaryPluginBase(ResidualBinaryPluginBase const&) = default;
    ~ResidualBinaryPluginBase() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;

    // IPluginV3OneCore
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;

protected:
    // Rank of X this op expects (0 = any rank >= 1).
    virtual int32_t expectedInputRank() const noexcept = 0;
    // Rank of Wq this op expects.
    virtual int32_t expectedWeightRank() const noexcept = 0;

    // Fill the kernel's weight descriptor from the enqueue arguments; false (and a logged
    // reason) if the shapes do not match the contract. rowLen: length of one weight row.
    bool describeWeights(nvinfer1::PluginTensorDesc const* inputDesc, void const* const* inputs, int64_t rowLen,
        EdgediffRblWeights& weights) const noexcept;

    // Number of plugin inputs (7 or 8), recorded by configurePlugin / onShapeChange because
    // enqueue does not receive it.
    int32_t mNbInputs{kMIN_INPUTS};
    std::vector<nvinfer1::PluginField> mFieldsToSerialize;
    nvinfer1::PluginFieldCollection mFCToSerialize{0, nullptr};
};

class ResidualBinaryLinearPlugin final : public ResidualBinaryPluginBase
{
public:
    // inFeatures <= 0: take Cin from the input shapes.
    explicit ResidualBinaryLinearPlugin(int32_t inFeatures);
    ResidualBinaryLinearPlugin(ResidualBinaryLinearPlugin const&) = default;

    nvinfer1::IPluginV3* clone() noexcept override;
    char const* getPluginName() const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

protected:
    int32_t expectedInputRank() const noexcept override
    {
        return 0;
    }
    int32_t expectedWeightRank() const noexcept override
    {
        return 2;
    }

private:
    int32_t mInFeatures{0};
};

// Attributes of the conv node, in ONNX conventions (pads = [top, left, bottom, right]).
struct ConvAttributes
{
    int32_t strides[2]{1, 1};
    int32_t pads[4]{0, 0, 0, 0};
    int32_t dilations[2]{1, 1};
    int32_t group{1};
    int32_t kernelShape[2]{0, 0}; // 0: take kh, kw from Wq
};

class ResidualBinaryConvPlugin final : public ResidualBinaryPluginBase
{
public:
    explicit ResidualBinaryConvPlugin(ConvAttributes const& attributes);
    ResidualBinaryConvPlugin(ResidualBinaryConvPlugin const&) = default;

    nvinfer1::IPluginV3* clone() noexcept override;
    char const* getPluginName() const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

protected:
    int32_t expectedInputRank() const noexcept override
    {
        return 4;
    }
    int32_t expectedWeightRank() const noexcept override
    {
        return 4;
    }

private:
    ConvAttributes mAttrs;
};

// Creators: the build phase gets the ONNX attributes, the runtime phase what
// getFieldsToSerialize() returned (the same field names).
class ResidualBinaryLinearCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    ResidualBinaryLinearCreator();
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
        nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFC{0, nullptr};
};

class ResidualBinaryConvCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    ResidualBinaryConvCreator();
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
        nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFC{0, nullptr};
};

} // namespace trt
} // namespace edgediff

#define EDGEDIFF_TRT_EXPORT __attribute__((visibility("default")))

extern "C"
{
    // Entry points IPluginRegistry::loadLibrary looks up in a plugin shared library.
    EDGEDIFF_TRT_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
    EDGEDIFF_TRT_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder);
}
