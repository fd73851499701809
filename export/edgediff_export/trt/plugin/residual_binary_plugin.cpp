// edgediff: TensorRT 10 IPluginV3 glue for the binary-residual ops (see residual_binary_plugin.h).
#include "residual_binary_plugin.h"

#include <cstdio>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <new>
#include <string>

using nvinfer1::DataType;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::IDimensionExpr;
using nvinfer1::IExprBuilder;
using nvinfer1::IPluginCapability;
using nvinfer1::IPluginV3;
using nvinfer1::PluginCapabilityType;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorFormat;

namespace edgediff
{
namespace trt
{
namespace
{

// ---- logging: through the logger TensorRT hands us, else stderr ------------------------------

std::mutex gLoggerMutex;
nvinfer1::ILoggerFinder* gLoggerFinder{nullptr};

void logMessage(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept
{
    try
    {
        std::string const text = std::string{"[edgediff plugin] "} + message;
        nvinfer1::ILogger* logger{nullptr};
        {
            std::lock_guard<std::mutex> lock(gLoggerMutex);
            if (gLoggerFinder != nullptr)
            {
                logger = gLoggerFinder->findLogger();
            }
        }
        if (logger != nullptr)
        {
            logger->log(severity, text.c_str());
        }
        else if (severity <= nvinfer1::ILogger::Severity::kWARNING)
        {
            std::fprintf(stderr, "%s\n", text.c_str());
        }
    }
    catch (...)
    {
    }
}

void logError(std::string const& message) noexcept
{
    logMessage(nvinfer1::ILogger::Severity::kERROR, message);
}

// ---- plugin fields ---------------------------------------------------------------------------

// Integers of a field given as kINT32 (what the ONNX parser makes of INT/INTS) or kINT64.
bool readInts(PluginField const& field, std::vector<int64_t>& values)
{
    values.clear();
    if (field.data == nullptr || field.length < 0)
    {
        return false;
    }
    for (int32_t i = 0; i < field.length; ++i)
    {
        if (field.type == PluginFieldType::kINT32)
        {
            values.push_back(static_cast<int32_t const*>(field.data)[i]);
        }
        else if (field.type == PluginFieldType::kINT64)
        {
            values.push_back(static_cast<int64_t const*>(field.data)[i]);
        }
        else
        {
            return false;
        }
    }
    return true;
}

bool fitsInt32(int64_t value)
{
    return value >= std::numeric_limits<int32_t>::min() && value <= std::numeric_limits<int32_t>::max();
}

// Copy exactly `count` integers of `field` into `out`; false with a logged reason otherwise.
bool readIntArray(PluginField const& field, int32_t* out, int32_t count)
{
    std::vector<int64_t> values;
    if (!readInts(field, values) || static_cast<int32_t>(values.size()) != count)
    {
        logError(std::string{"attribute '"} + field.name + "' must be " + std::to_string(count) + " integer(s)");
        return false;
    }
    for (int32_t i = 0; i < count; ++i)
    {
        if (!fitsInt32(values[i]))
        {
            logError(std::string{"attribute '"} + field.name + "' is out of int32 range");
            return false;
        }
        out[i] = static_cast<int32_t>(values[i]);
    }
    return true;
}

int64_t volume(nvinfer1::Dims const& dims, int32_t begin, int32_t end)
{
    int64_t v = 1;
    for (int32_t i = begin; i < end; ++i)
    {
        v *= dims.d[i];
    }
    return v;
}

bool isRank(nvinfer1::Dims const& dims, int32_t rank)
{
    return dims.nbDims == rank;
}

// A known (non-negative) dimension that differs from `expected` (also known) is a mismatch.
bool knownMismatch(int64_t value, int64_t expected)
{
    return value >= 0 && expected >= 0 && value != expected;
}

} // namespace

// ---- ResidualBinaryPluginBase ----------------------------------------------------------------

IPluginCapability* ResidualBinaryPluginBase::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

char const* ResidualBinaryPluginBase::getPluginVersion() const noexcept
{
    return kPLUGIN_VERSION;
}

char const* ResidualBinaryPluginBase::getPluginNamespace() const noexcept
{
    return kPLUGIN_NAMESPACE;
}

int32_t ResidualBinaryPluginBase::getNbOutputs() const noexcept
{
    return 1;
}

int32_t ResidualBinaryPluginBase::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbOutputs != 1 || nbInputs < kMIN_INPUTS || nbInputs > kMAX_INPUTS)
    {
        return -1;
    }
    outputTypes[0] = inputTypes[kX];
    return 0;
}

bool ResidualBinaryPluginBase::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs < kMIN_INPUTS || nbInputs > kMAX_INPUTS || nbOutputs != 1 || pos < 0 || pos >= nbInputs + nbOutputs)
    {
        return false;
    }
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    if (pos == nbInputs)
    {
        return desc.type == inOut[kX].desc.type;
    }
    switch (pos)
    {
    case kX: return desc.type == DataType::kFLOAT || desc.type == DataType::kHALF;
    case kWQ:
    case kW_ZERO: return desc.type == DataType::kINT8;
    case kW_SCALE:
    case kALPHA:
    case kBIAS: return desc.type == DataType::kFLOAT;
    // kUINT8 is not a legal plugin I/O type; the ONNX parser stores UINT8 initializers as INT32.
    case kSIGNS: return desc.type == DataType::kINT32 || desc.type == DataType::kINT8;
    case kCHANNELS: return desc.type == DataType::kINT32 || desc.type == DataType::kINT64;
    default: return false;
    }
}

int32_t ResidualBinaryPluginBase::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
    DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (nbInputs < kMIN_INPUTS || nbInputs > kMAX_INPUTS || nbOutputs != 1)
    {
        logError("expects 7 or 8 inputs (X, Wq, w_scale, w_zero, signs, alpha, channels[, bias]) and 1 output");
        return -1;
    }
    mNbInputs = nbInputs;
    nvinfer1::Dims const& x = in[kX].desc.dims;
    nvinfer1::Dims const& wq = in[kWQ].desc.dims;
    int32_t const xRank = expectedInputRank();
    if ((xRank > 0 && !isRank(x, xRank)) || x.nbDims < 1 || !isRank(wq, expectedWeightRank())
        || !isRank(in[kW_SCALE].desc.dims, 1) || !isRank(in[kW_ZERO].desc.dims, 1) || !isRank(in[kSIGNS].desc.dims, 2)
        || !isRank(in[kALPHA].desc.dims, 1) || !isRank(in[kCHANNELS].desc.dims, 1)
        || (nbInputs > kBIAS && !isRank(in[kBIAS].desc.dims, 1)))
    {
        logError("input ranks do not match the op contract");
        return -1;
    }
    int64_t const cout = wq.d[0];
    int64_t const k = in[kSIGNS].desc.dims.d[0];
    if (knownMismatch(in[kW_SCALE].desc.dims.d[0], cout) || knownMismatch(in[kW_ZERO].desc.dims.d[0], cout)
        || knownMismatch(in[kALPHA].desc.dims.d[0], k) || knownMismatch(in[kCHANNELS].desc.dims.d[0], k)
        || (nbInputs > kBIAS && knownMismatch(in[kBIAS].desc.dims.d[0], cout)))
    {
        logError("w_scale/w_zero/bias must have Cout entries and alpha/channels K entries");
        return -1;
    }
    return 0;
}

size_t ResidualBinaryPluginBase::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    if (nbInputs <= kWQ)
    {
        return 0;
    }
    int64_t cout = inputs[kWQ].desc.dims.d[0];
    if (cout < 0)
    {
        cout = inputs[kWQ].max.d[0];
    }
    if (!fitsInt32(cout))
    {
        return 0;
    }
    return edgediff_rbl_workspace_bytes(static_cast<int>(cout));
}

int32_t ResidualBinaryPluginBase::onShapeChange(
    PluginTensorDesc const* /*in*/, int32_t nbInputs, PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (nbInputs < kMIN_INPUTS || nbInputs > kMAX_INPUTS || nbOutputs != 1)
    {
        return -1;
    }
    mNbInputs = nbInputs;
    return 0;
}

IPluginV3* ResidualBinaryPluginBase::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept
{
    return clone();
}

bool ResidualBinaryPluginBase::describeWeights(
    PluginTensorDesc const* inputDesc, void const* const* inputs, int64_t rowLen, EdgediffRblWeights& w) const noexcept
{
    nvinfer1::Dims const& signs = inputDesc[kSIGNS].dims;
    int64_t const cout = inputDesc[kWQ].dims.d[0];
    int64_t const k = signs.d[0];
    int64_t const rowBytes = signs.d[1];
    if (inputDesc[kW_SCALE].dims.d[0] != cout || inputDesc[kW_ZERO].dims.d[0] != cout
        || inputDesc[kALPHA].dims.d[0] != k || inputDesc[kCHANNELS].dims.d[0] != k
        || (mNbInputs > kBIAS && inputDesc[kBIAS].dims.d[0] != cout))
    {
        logError("w_scale/w_zero/bias must have Cout entries and alpha/channels K entries");
        return false;
    }
    if (k < 0 || k > cout || !fitsInt32(rowBytes) || (k > 0 && rowBytes < (rowLen + 7) / 8))
    {
        logError("signs must be [K, ceil(row/8)] with K <= Cout");
        return false;
    }
    w.wq = static_cast<signed char const*>(inputs[kWQ]);
    w.w_scale = static_cast<float const*>(inputs[kW_SCALE]);
    w.w_zero = static_cast<signed char const*>(inputs[kW_ZERO]);
    w.signs = static_cast<unsigned char const*>(inputs[kSIGNS]);
    w.signs_elem_bytes = inputDesc[kSIGNS].type == DataType::kINT32 ? 4 : 1;
    w.sign_row_bytes = static_cast<int>(rowBytes);
    w.num_residual = static_cast<int>(k);
    w.alpha = static_cast<float const*>(inputs[kALPHA]);
    w.channels = inputs[kCHANNELS];
    w.channels_elem_bytes = inputDesc[kCHANNELS].type == DataType::kINT64 ? 8 : 4;
    w.bias = mNbInputs > kBIAS ? static_cast<float const*>(inputs[kBIAS]) : nullptr;
    return true;
}

// ---- ResidualBinaryLinearPlugin --------------------------------------------------------------

ResidualBinaryLinearPlugin::ResidualBinaryLinearPlugin(int32_t inFeatures)
    : mInFeatures(inFeatures)
{
}

IPluginV3* ResidualBinaryLinearPlugin::clone() noexcept
{
    return new (std::nothrow) ResidualBinaryLinearPlugin(*this);
}

char const* ResidualBinaryLinearPlugin::getPluginName() const noexcept
{
    return kLINEAR_PLUGIN_NAME;
}

int32_t ResidualBinaryLinearPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
    IExprBuilder& /*exprBuilder*/) noexcept
{
    if (nbInputs < kMIN_INPUTS || nbOutputs != 1 || inputs[kX].nbDims < 1 || inputs[kWQ].nbDims != 2)
    {
        return -1;
    }
    outputs[0] = inputs[kX];
    outputs[0].d[inputs[kX].nbDims - 1] = inputs[kWQ].d[0];
    return 0;
}

int32_t ResidualBinaryLinearPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    nvinfer1::Dims const& x = inputDesc[kX].dims;
    nvinfer1::Dims const& wq = inputDesc[kWQ].dims;
    int64_t const cin = x.d[x.nbDims - 1];
    int64_t const rows = volume(x, 0, x.nbDims - 1);
    int64_t const cout = wq.d[0];
    if (wq.d[1] != cin || (mInFeatures > 0 && mInFeatures != cin) || !fitsInt32(cin) || !fitsInt32(cout))
    {
        logError("ResidualBinaryLinear: X has " + std::to_string(cin) + " features, Wq is [" + std::to_string(cout)
            + ", " + std::to_string(wq.d[1]) + "], in_features=" + std::to_string(mInFeatures));
        return -1;
    }
    EdgediffRblWeights weights{};
    if (!describeWeights(inputDesc, inputs, cin, weights))
    {
        return -1;
    }
    int const isHalf = inputDesc[kX].type == DataType::kHALF ? 1 : 0;
    cudaError_t const status = edgediff_rbl_linear(inputs[kX], isHalf, &weights, outputs[0], rows,
        static_cast<int>(cin), static_cast<int>(cout), workspace, stream);
    if (status != cudaSuccess)
    {
        logError(std::string{"ResidualBinaryLinear launch failed: "} + cudaGetErrorString(status));
        return -1;
    }
    return 0;
}

PluginFieldCollection const* ResidualBinaryLinearPlugin::getFieldsToSerialize() noexcept
{
    mFieldsToSerialize.clear();
    mFieldsToSerialize.emplace_back("in_features", &mInFeatures, PluginFieldType::kINT32, 1);
    mFCToSerialize.nbFields = static_cast<int32_t>(mFieldsToSerialize.size());
    mFCToSerialize.fields = mFieldsToSerialize.data();
    return &mFCToSerialize;
}

// ---- ResidualBinaryConvPlugin ----------------------------------------------------------------

ResidualBinaryConvPlugin::ResidualBinaryConvPlugin(ConvAttributes const& attributes)
    : mAttrs(attributes)
{
}

IPluginV3* ResidualBinaryConvPlugin::clone() noexcept
{
    return new (std::nothrow) ResidualBinaryConvPlugin(*this);
}

char const* ResidualBinaryConvPlugin::getPluginName() const noexcept
{
    return kCONV_PLUGIN_NAME;
}

int32_t ResidualBinaryConvPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
    IExprBuilder& exprBuilder) noexcept
{
    if (nbInputs < kMIN_INPUTS || nbOutputs != 1 || inputs[kX].nbDims != 4 || inputs[kWQ].nbDims != 4)
    {
        return -1;
    }
    DimsExprs const& x = inputs[kX];
    DimsExprs const& w = inputs[kWQ];
    outputs[0].nbDims = 4;
    outputs[0].d[0] = x.d[0];
    outputs[0].d[1] = w.d[0];
    for (int32_t axis = 0; axis < 2; ++axis)
    {
        // out = (in + pad_begin + pad_end - dilation * (kernel - 1) - 1) / stride + 1
        IDimensionExpr const* kernel = mAttrs.kernelShape[axis] > 0 ? exprBuilder.constant(mAttrs.kernelShape[axis])
                                                                   : w.d[2 + axis];
        IDimensionExpr const* one = exprBuilder.constant(1);
        IDimensionExpr const* span = exprBuilder.operation(nvinfer1::DimensionOperation::kSUM,
            *exprBuilder.operation(nvinfer1::DimensionOperation::kPROD, *exprBuilder.constant(mAttrs.dilations[axis]),
                *exprBuilder.operation(nvinfer1::DimensionOperation::kSUB, *kernel, *one)),
            *one);
        IDimensionExpr const* padded = exprBuilder.operation(nvinfer1::DimensionOperation::kSUM, *x.d[2 + axis],
            *exprBuilder.constant(static_cast<int64_t>(mAttrs.pads[axis]) + mAttrs.pads[axis + 2]));
        IDimensionExpr const* reach = exprBuilder.operation(nvinfer1::DimensionOperation::kSUB, *padded, *span);
        IDimensionExpr const* steps = exprBuilder.operation(
            nvinfer1::DimensionOperation::kFLOOR_DIV, *reach, *exprBuilder.constant(mAttrs.strides[axis]));
        outputs[0].d[2 + axis] = exprBuilder.operation(nvinfer1::DimensionOperation::kSUM, *steps, *one);
    }
    return 0;
}

int32_t ResidualBinaryConvPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (ResidualBinaryPluginBase::configurePlugin(in, nbInputs, out, nbOutputs) != 0)
    {
        return -1;
    }
    nvinfer1::Dims const& x = in[kX].desc.dims;
    nvinfer1::Dims const& w = in[kWQ].desc.dims;
    if (mAttrs.group <= 0 || knownMismatch(x.d[1], w.d[1] * mAttrs.group)
        || (w.d[0] >= 0 && w.d[0] % mAttrs.group != 0) || knownMismatch(w.d[2], mAttrs.kernelShape[0] > 0 ? mAttrs.kernelShape[0] : -1)
        || knownMismatch(w.d[3], mAttrs.kernelShape[1] > 0 ? mAttrs.kernelShape[1] : -1))
    {
        logError("ResidualBinaryConv: Wq must be [Cout, Cin/group, kh, kw] matching X, group and kernel_shape");
        return -1;
    }
    if (w.d[2] >= 0 && w.d[3] >= 0 && w.d[2] * w.d[3] > EDGEDIFF_RBL_CONV_CHUNK)
    {
        logError("ResidualBinaryConv: kh*kw above " + std::to_string(EDGEDIFF_RBL_CONV_CHUNK) + " is not supported");
        return -1;
    }
    return 0;
}

int32_t ResidualBinaryConvPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    nvinfer1::Dims const& x = inputDesc[kX].dims;
    nvinfer1::Dims const& w = inputDesc[kWQ].dims;
    nvinfer1::Dims const& y = outputDesc[0].dims;
    if (x.nbDims != 4 || w.nbDims != 4 || y.nbDims != 4)
    {
        logError("ResidualBinaryConv: X, Wq and Y must be 4-D");
        return -1;
    }
    for (int32_t i = 0; i < 4; ++i)
    {
        if (!fitsInt32(x.d[i]) || !fitsInt32(w.d[i]) || !fitsInt32(y.d[i]))
        {
            logError("ResidualBinaryConv: dimensions must fit in int32");
            return -1;
        }
    }
    EdgediffRblConvShape shape{};
    shape.batch = static_cast<int>(x.d[0]);
    shape.in_channels = static_cast<int>(x.d[1]);
    shape.in_h = static_cast<int>(x.d[2]);
    shape.in_w = static_cast<int>(x.d[3]);
    shape.out_channels = static_cast<int>(w.d[0]);
    shape.out_h = static_cast<int>(y.d[2]);
    shape.out_w = static_cast<int>(y.d[3]);
    shape.kernel_h = static_cast<int>(w.d[2]);
    shape.kernel_w = static_cast<int>(w.d[3]);
    shape.stride_h = mAttrs.strides[0];
    shape.stride_w = mAttrs.strides[1];
    shape.pad_top = mAttrs.pads[0];
    shape.pad_left = mAttrs.pads[1];
    shape.dilation_h = mAttrs.dilations[0];
    shape.dilation_w = mAttrs.dilations[1];
    shape.group = mAttrs.group;
    if (w.d[1] * mAttrs.group != x.d[1] || y.d[1] != w.d[0])
    {
        logError("ResidualBinaryConv: channel counts do not match Wq and group");
        return -1;
    }
    EdgediffRblWeights weights{};
    if (!describeWeights(inputDesc, inputs, w.d[1] * w.d[2] * w.d[3], weights))
    {
        return -1;
    }
    int const isHalf = inputDesc[kX].type == DataType::kHALF ? 1 : 0;
    cudaError_t const status = edgediff_rbl_conv2d(inputs[kX], isHalf, &weights, outputs[0], &shape, workspace, stream);
    if (status != cudaSuccess)
    {
        logError(std::string{"ResidualBinaryConv launch failed: "} + cudaGetErrorString(status));
        return -1;
    }
    return 0;
}

PluginFieldCollection const* ResidualBinaryConvPlugin::getFieldsToSerialize() noexcept
{
    mFieldsToSerialize.clear();
    mFieldsToSerialize.emplace_back("strides", mAttrs.strides, PluginFieldType::kINT32, 2);
    mFieldsToSerialize.emplace_back("pads", mAttrs.pads, PluginFieldType::kINT32, 4);
    mFieldsToSerialize.emplace_back("dilations", mAttrs.dilations, PluginFieldType::kINT32, 2);
    mFieldsToSerialize.emplace_back("group", &mAttrs.group, PluginFieldType::kINT32, 1);
    mFieldsToSerialize.emplace_back("kernel_shape", mAttrs.kernelShape, PluginFieldType::kINT32, 2);
    mFCToSerialize.nbFields = static_cast<int32_t>(mFieldsToSerialize.size());
    mFCToSerialize.fields = mFieldsToSerialize.data();
    return &mFCToSerialize;
}

// ---- creators --------------------------------------------------------------------------------

ResidualBinaryLinearCreator::ResidualBinaryLinearCreator()
{
    mFields.emplace_back("in_features", nullptr, PluginFieldType::kINT32, 1);
    mFC.nbFields = static_cast<int32_t>(mFields.size());
    mFC.fields = mFields.data();
}

char const* ResidualBinaryLinearCreator::getPluginName() const noexcept
{
    return kLINEAR_PLUGIN_NAME;
}

char const* ResidualBinaryLinearCreator::getPluginVersion() const noexcept
{
    return kPLUGIN_VERSION;
}

char const* ResidualBinaryLinearCreator::getPluginNamespace() const noexcept
{
    return kPLUGIN_NAMESPACE;
}

PluginFieldCollection const* ResidualBinaryLinearCreator::getFieldNames() noexcept
{
    return &mFC;
}

IPluginV3* ResidualBinaryLinearCreator::createPlugin(
    char const* /*name*/, PluginFieldCollection const* fc, nvinfer1::TensorRTPhase /*phase*/) noexcept
{
    try
    {
        int32_t inFeatures = 0;
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
        {
            PluginField const& field = fc->fields[i];
            if (field.name != nullptr && std::strcmp(field.name, "in_features") == 0
                && !readIntArray(field, &inFeatures, 1))
            {
                return nullptr;
            }
        }
        return new ResidualBinaryLinearPlugin(inFeatures);
    }
    catch (std::exception const& e)
    {
        logError(std::string{"ResidualBinaryLinear: "} + e.what());
    }
    return nullptr;
}

ResidualBinaryConvCreator::ResidualBinaryConvCreator()
{
    mFields.emplace_back("strides", nullptr, PluginFieldType::kINT32, 2);
    mFields.emplace_back("pads", nullptr, PluginFieldType::kINT32, 4);
    mFields.emplace_back("dilations", nullptr, PluginFieldType::kINT32, 2);
    mFields.emplace_back("group", nullptr, PluginFieldType::kINT32, 1);
    mFields.emplace_back("kernel_shape", nullptr, PluginFieldType::kINT32, 2);
    mFC.nbFields = static_cast<int32_t>(mFields.size());
    mFC.fields = mFields.data();
}

char const* ResidualBinaryConvCreator::getPluginName() const noexcept
{
    return kCONV_PLUGIN_NAME;
}

char const* ResidualBinaryConvCreator::getPluginVersion() const noexcept
{
    return kPLUGIN_VERSION;
}

char const* ResidualBinaryConvCreator::getPluginNamespace() const noexcept
{
    return kPLUGIN_NAMESPACE;
}

PluginFieldCollection const* ResidualBinaryConvCreator::getFieldNames() noexcept
{
    return &mFC;
}

IPluginV3* ResidualBinaryConvCreator::createPlugin(
    char const* /*name*/, PluginFieldCollection const* fc, nvinfer1::TensorRTPhase /*phase*/) noexcept
{
    try
    {
        ConvAttributes attrs;
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
        {
            PluginField const& field = fc->fields[i];
            if (field.name == nullptr)
            {
                continue;
            }
            bool ok = true;
            if (std::strcmp(field.name, "strides") == 0)
            {
                ok = readIntArray(field, attrs.strides, 2);
            }
            else if (std::strcmp(field.name, "pads") == 0)
            {
                ok = readIntArray(field, attrs.pads, 4);
            }
            else if (std::strcmp(field.name, "dilations") == 0)
            {
                ok = readIntArray(field, attrs.dilations, 2);
            }
            else if (std::strcmp(field.name, "group") == 0)
            {
                ok = readIntArray(field, &attrs.group, 1);
            }
            else if (std::strcmp(field.name, "kernel_shape") == 0)
            {
                ok = readIntArray(field, attrs.kernelShape, 2);
            }
            if (!ok)
            {
                return nullptr;
            }
        }
        if (attrs.strides[0] <= 0 || attrs.strides[1] <= 0 || attrs.dilations[0] <= 0 || attrs.dilations[1] <= 0
            || attrs.group <= 0 || attrs.pads[0] < 0 || attrs.pads[1] < 0 || attrs.pads[2] < 0 || attrs.pads[3] < 0)
        {
            logError("ResidualBinaryConv: strides, dilations and group must be positive and pads non-negative");
            return nullptr;
        }
        return new ResidualBinaryConvPlugin(attrs);
    }
    catch (std::exception const& e)
    {
        logError(std::string{"ResidualBinaryConv: "} + e.what());
    }
    return nullptr;
}

} // namespace trt
} // namespace edgediff

// ---- library entry points ----------------------------------------------------------------------

extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static edgediff::trt::ResidualBinaryLinearCreator sLinearCreator;
    static edgediff::trt::ResidualBinaryConvCreator sConvCreator;
    static nvinfer1::IPluginCreatorInterface* const sCreators[] = {&sLinearCreator, &sConvCreator};
    nbCreators = 2;
    return sCreators;
}

extern "C" void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    std::lock_guard<std::mutex> lock(edgediff::trt::gLoggerMutex);
    if (edgediff::trt::gLoggerFinder == nullptr)
    {
        edgediff::trt::gLoggerFinder = finder;
    }
}
