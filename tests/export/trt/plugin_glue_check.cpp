// Host-only check of the TensorRT plugin glue in libedgediff_trt_plugins.so: everything TensorRT
// calls before enqueue (creators, fields, supportsFormatCombination, output types and shapes,
// configurePlugin, workspace, serialization round trip, clone). No GPU and no libnvinfer needed:
// IExprBuilder/IDimensionExpr are backed here by small fakes of their (header-only) impl classes.
//
// Build: g++ -std=c++17 -isystem <TensorRT>/include -isystem <cuda>/include plugin_glue_check.cpp -ldl
// Run:   ./plugin_glue_check path/to/libedgediff_trt_plugins.so
#include "NvInferRuntime.h"

#include <cstdio>
#include <cstring>
#include <deque>
#include <dlfcn.h>
#include <memory>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{

int gFailures = 0;
int gChecks = 0;

void check(bool ok, std::string const& what)
{
    ++gChecks;
    if (!ok)
    {
        ++gFailures;
        std::printf("FAIL: %s\n", what.c_str());
    }
}

// ---- constant-only expression builder ----------------------------------------------------------

class FakeExprImpl : public apiv::VDimensionExpr
{
public:
    explicit FakeExprImpl(int64_t v)
        : mValue(v)
    {
    }
    bool isConstant() const override
    {
        return true;
    }
    int64_t getConstantValue() const override
    {
        return mValue;
    }
    bool isSizeTensor() const override
    {
        return false;
    }

private:
    int64_t mValue;
};

class FakeExpr : public IDimensionExpr
{
public:
    explicit FakeExpr(int64_t v)
        : mImplObject(v)
    {
        mImpl = &mImplObject;
    }
    ~FakeExpr() override = default;

private:
    FakeExprImpl mImplObject;
};

class FakeBuilderImpl : public apiv::VExprBuilder
{
public:
    IDimensionExpr const* constant(int64_t value) override
    {
        mExprs.emplace_back(std::make_unique<FakeExpr>(value));
        return mExprs.back().get();
    }
    IDimensionExpr const* operation(DimensionOperation op, IDimensionExpr const& a, IDimensionExpr const& b) override
    {
        int64_t const x = a.getConstantValue();
        int64_t const y = b.getConstantValue();
        int64_t r = 0;
        switch (op)
        {
        case DimensionOperation::kSUM: r = x + y; break;
        case DimensionOperation::kPROD: r = x * y; break;
        case DimensionOperation::kMAX: r = x > y ? x : y; break;
        case DimensionOperation::kMIN: r = x < y ? x : y; break;
        case DimensionOperation::kSUB: r = x - y; break;
        case DimensionOperation::kEQUAL: r = x == y; break;
        case DimensionOperation::kLESS: r = x < y; break;
        case DimensionOperation::kFLOOR_DIV: r = (x >= 0 ? x / y : -((-x + y - 1) / y)); break;
        case DimensionOperation::kCEIL_DIV: r = (x + y - 1) / y; break;
        }
        return constant(r);
    }
    IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override
    {
        return nullptr;
    }

private:
    std::deque<std::unique_ptr<FakeExpr>> mExprs;
};

class FakeBuilder : public IExprBuilder
{
public:
    FakeBuilder()
    {
        mImpl = &mImplObject;
    }
    ~FakeBuilder() override = default;

private:
    FakeBuilderImpl mImplObject;
};

// ---- helpers -------------------------------------------------------------------------------------

DimsExprs exprs(FakeBuilder& b, std::vector<int64_t> const& dims)
{
    DimsExprs e{};
    e.nbDims = static_cast<int32_t>(dims.size());
    for (size_t i = 0; i < dims.size(); ++i)
    {
        e.d[i] = b.constant(dims[i]);
    }
    return e;
}

Dims makeDims(std::vector<int64_t> const& dims)
{
    Dims d{};
    d.nbDims = static_cast<int32_t>(dims.size());
    for (size_t i = 0; i < dims.size(); ++i)
    {
        d.d[i] = dims[i];
    }
    return d;
}

DynamicPluginTensorDesc desc(std::vector<int64_t> const& dims, DataType type)
{
    DynamicPluginTensorDesc t{};
    t.desc.dims = makeDims(dims);
    t.desc.type = type;
    t.desc.format = TensorFormat::kLINEAR;
    t.desc.scale = -1.0F;
    t.min = t.opt = t.max = t.desc.dims;
    return t;
}

// A fully supported I/O set: X, Wq, w_scale, w_zero, signs, alpha, channels, bias, Y.
std::vector<DynamicPluginTensorDesc> linearIO(DataType x, DataType signs, DataType channels)
{
    return {desc({2, 19, 45}, x), desc({70, 45}, DataType::kINT8), desc({70}, DataType::kFLOAT),
        desc({70}, DataType::kINT8), desc({9, 6}, signs), desc({9}, DataType::kFLOAT), desc({9}, channels),
        desc({70}, DataType::kFLOAT), desc({2, 19, 70}, x)};
}

bool supportsAll(IPluginV3OneBuild* build, std::vector<DynamicPluginTensorDesc>& io, int32_t nbInputs)
{
    for (int32_t pos = 0; pos < static_cast<int32_t>(io.size()); ++pos)
    {
        if (!build->supportsFormatCombination(pos, io.data(), nbInputs, 1))
        {
            return false;
        }
    }
    return true;
}

std::vector<int32_t> fieldInts(PluginFieldCollection const* fc, char const* name)
{
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        if (std::strcmp(fc->fields[i].name, name) == 0 && fc->fields[i].type == PluginFieldType::kINT32)
        {
            auto const* p = static_cast<int32_t const*>(fc->fields[i].data);
            return std::vector<int32_t>(p, p + fc->fields[i].length);
        }
    }
    return {};
}

} // namespace

int main(int argc, char** argv)
{
    if (argc != 2)
    {
        std::printf("usage: %s libedgediff_trt_plugins.so\n", argv[0]);
        return 2;
    }
    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr)
    {
        std::printf("dlopen failed: %s\n", dlerror());
        return 2;
    }
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
    check(getCreators != nullptr, "getCreators exported");
    check(dlsym(lib, "setLoggerFinder") != nullptr, "setLoggerFinder exported");
    check(dlsym(lib, "edgediff_rbl_linear") == nullptr, "kernel launchers stay hidden");
    if (getCreators == nullptr)
    {
        return 1;
    }
    int32_t nbCreators = 0;
    IPluginCreatorInterface* const* creators = getCreators(nbCreators);
    check(nbCreators == 2, "two creators");
    check(std::strcmp(creators[0]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0, "V3One creator");
    auto* linearCreator = static_cast<IPluginCreatorV3One*>(creators[0]);
    auto* convCreator = static_cast<IPluginCreatorV3One*>(creators[1]);
    check(std::string(linearCreator->getPluginName()) == "ResidualBinaryLinear", "linear name");
    check(std::string(convCreator->getPluginName()) == "ResidualBinaryConv", "conv name");
    check(std::string(linearCreator->getPluginVersion()) == "1" && std::string(convCreator->getPluginVersion()) == "1",
        "version 1");
    check(std::string(linearCreator->getPluginNamespace()) == "edgediff"
            && std::string(convCreator->getPluginNamespace()) == "edgediff",
        "namespace edgediff");
    check(linearCreator->getFieldNames()->nbFields == 1, "linear field names");
    check(convCreator->getFieldNames()->nbFields == 5, "conv field names");

    FakeBuilder builder;

    // ---- linear ----
    int32_t inFeatures = 45;
    PluginField lf[] = {PluginField("in_features", &inFeatures, PluginFieldType::kINT32, 1)};
    PluginFieldCollection lfc{1, lf};
    std::unique_ptr<IPluginV3> linear(linearCreator->createPlugin("lin", &lfc, TensorRTPhase::kBUILD));
    check(linear != nullptr, "create linear");
    if (!linear)
    {
        return 1;
    }
    auto* core = static_cast<IPluginV3OneCore*>(linear->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(linear->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<IPluginV3OneRuntime*>(linear->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    check(std::string(core->getPluginName()) == "ResidualBinaryLinear", "core name");
    check(std::string(core->getPluginNamespace()) == "edgediff", "core namespace");
    check(std::strcmp(build->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD") == 0, "build capability");
    check(std::strcmp(runtime->getInterfaceInfo().kind, "PLUGIN_V3ONE_RUNTIME") == 0, "runtime capability");
    check(build->getNbOutputs() == 1, "one output");

    for (DataType x : {DataType::kFLOAT, DataType::kHALF})
    {
        for (DataType s : {DataType::kINT32, DataType::kINT8})
        {
            for (DataType c : {DataType::kINT64, DataType::kINT32})
            {
                auto io = linearIO(x, s, c);
                check(supportsAll(build, io, 8), "supported combination (8 inputs)");
                std::vector<DynamicPluginTensorDesc> io7(io.begin(), io.begin() + 7);
                io7.push_back(io.back());
                check(supportsAll(build, io7, 7), "supported combination (7 inputs, no bias)");
            }
        }
    }
    {
        auto io = linearIO(DataType::kFLOAT, DataType::kINT32, DataType::kINT64);
        auto bad = [&](int32_t pos, DataType t, char const* what) {
            auto copy = io;
            copy[pos].desc.type = t;
            check(!build->supportsFormatCombination(pos, copy.data(), 8, 1), what);
        };
        bad(0, DataType::kINT8, "X int8 rejected");
        bad(1, DataType::kFLOAT, "Wq float rejected");
        bad(4, DataType::kUINT8, "signs uint8 rejected (not a plugin I/O type)");
        bad(6, DataType::kFLOAT, "channels float rejected");
        bad(8, DataType::kHALF, "Y must match X");
        auto chw4 = io;
        chw4[0].desc.format = TensorFormat::kCHW4;
        check(!build->supportsFormatCombination(0, chw4.data(), 8, 1), "non-linear format rejected");
        check(!build->supportsFormatCombination(0, io.data(), 6, 1), "6 inputs rejected");

        DataType in[8] = {DataType::kHALF, DataType::kINT8, DataType::kFLOAT, DataType::kINT8, DataType::kINT32,
            DataType::kFLOAT, DataType::kINT64, DataType::kFLOAT};
        DataType out = DataType::kFLOAT;
        check(build->getOutputDataTypes(&out, 1, in, 8) == 0 && out == DataType::kHALF, "output type = X type");

        DimsExprs inputs[8] = {exprs(builder, {2, 19, 45}), exprs(builder, {70, 45}), exprs(builder, {70}),
            exprs(builder, {70}), exprs(builder, {9, 6}), exprs(builder, {9}), exprs(builder, {9}),
            exprs(builder, {70})};
        DimsExprs outShape{};
        check(build->getOutputShapes(inputs, 8, nullptr, 0, &outShape, 1, builder) == 0, "linear output shape");
        check(outShape.nbDims == 3 && outShape.d[0]->getConstantValue() == 2 && outShape.d[1]->getConstantValue() == 19
                && outShape.d[2]->getConstantValue() == 70,
            "linear output is [2, 19, 70]");

        check(build->configurePlugin(io.data(), 8, &io[8], 1) == 0, "configure linear");
        auto wrong = io;
        wrong[2].desc.dims = makeDims({69});
        check(build->configurePlugin(wrong.data(), 8, &wrong[8], 1) != 0, "w_scale size mismatch rejected");
        check(build->getWorkspaceSize(io.data(), 8, &io[8], 1) == 512, "workspace = 70 ints rounded to 256 B");
        check(runtime->onShapeChange(&io[0].desc, 8, &io[8].desc, 1) == 0, "onShapeChange");
    }
    {
        PluginFieldCollection const* fc = runtime->getFieldsToSerialize();
        check(fieldInts(fc, "in_features") == std::vector<int32_t>{45}, "serialize in_features");
        std::unique_ptr<IPluginV3> restored(linearCreator->createPlugin("lin", fc, TensorRTPhase::kRUNTIME));
        check(restored != nullptr, "deserialize linear");
        std::unique_ptr<IPluginV3> attached(runtime->attachToContext(nullptr));
        check(attached != nullptr && attached.get() != linear.get(), "attachToContext clones");
        std::unique_ptr<IPluginV3> cloned(linear->clone());
        auto* clonedRuntime
            = static_cast<IPluginV3OneRuntime*>(cloned->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        check(fieldInts(clonedRuntime->getFieldsToSerialize(), "in_features") == std::vector<int32_t>{45},
            "clone keeps in_features");
    }
    {
        int64_t badWidth = 45;
        PluginField wrongType[] = {PluginField("in_features", &badWidth, PluginFieldType::kFLOAT32, 1)};
        PluginFieldCollection wfc{1, wrongType};
        std::unique_ptr<IPluginV3> none(linearCreator->createPlugin("lin", &wfc, TensorRTPhase::kBUILD));
        check(none == nullptr, "float in_features rejected");
    }

    // ---- conv ----
    int32_t strides[2] = {2, 1};
    int32_t pads[4] = {1, 0, 2, 1};
    int32_t dilations[2] = {2, 1};
    int32_t group = 2;
    int32_t kernel[2] = {3, 2};
    PluginField cf[] = {PluginField("strides", strides, PluginFieldType::kINT32, 2),
        PluginField("pads", pads, PluginFieldType::kINT32, 4),
        PluginField("dilations", dilations, PluginFieldType::kINT32, 2),
        PluginField("group", &group, PluginFieldType::kINT32, 1),
        PluginField("kernel_shape", kernel, PluginFieldType::kINT32, 2)};
    PluginFieldCollection cfc{5, cf};
    std::unique_ptr<IPluginV3> conv(convCreator->createPlugin("conv", &cfc, TensorRTPhase::kBUILD));
    check(conv != nullptr, "create conv");
    if (!conv)
    {
        return 1;
    }
    auto* cbuild = static_cast<IPluginV3OneBuild*>(conv->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* cruntime = static_cast<IPluginV3OneRuntime*>(conv->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    {
        // X [2, 6, 11, 13], Wq [8, 3, 3, 2]: Ho = (11 + 3 - 2*2 - 1) / 2 + 1 = 5, Wo = (13 + 1 - 1 - 1) / 1 + 1 = 13
        DimsExprs inputs[7] = {exprs(builder, {2, 6, 11, 13}), exprs(builder, {8, 3, 3, 2}), exprs(builder, {8}),
            exprs(builder, {8}), exprs(builder, {3, 3}), exprs(builder, {3}), exprs(builder, {3})};
        DimsExprs outShape{};
        check(cbuild->getOutputShapes(inputs, 7, nullptr, 0, &outShape, 1, builder) == 0, "conv output shape");
        check(outShape.nbDims == 4 && outShape.d[0]->getConstantValue() == 2 && outShape.d[1]->getConstantValue() == 8
                && outShape.d[2]->getConstantValue() == 5 && outShape.d[3]->getConstantValue() == 13,
            "conv output is [2, 8, 5, 13]");
        std::vector<DynamicPluginTensorDesc> io = {desc({2, 6, 11, 13}, DataType::kFLOAT),
            desc({8, 3, 3, 2}, DataType::kINT8), desc({8}, DataType::kFLOAT), desc({8}, DataType::kINT8),
            desc({3, 3}, DataType::kINT32), desc({3}, DataType::kFLOAT), desc({3}, DataType::kINT64),
            desc({2, 8, 5, 13}, DataType::kFLOAT)};
        check(supportsAll(cbuild, io, 7), "conv combination (no bias)");
        check(cbuild->configurePlugin(io.data(), 7, &io[7], 1) == 0, "configure conv");
        auto wrong = io;
        wrong[1].desc.dims = makeDims({8, 6, 3, 2});
        check(cbuild->configurePlugin(wrong.data(), 7, &wrong[7], 1) != 0, "Cin/group mismatch rejected");
        PluginFieldCollection const* fc = cruntime->getFieldsToSerialize();
        check(fieldInts(fc, "pads") == std::vector<int32_t>{1, 0, 2, 1}, "serialize pads");
        check(fieldInts(fc, "strides") == std::vector<int32_t>{2, 1}, "serialize strides");
        check(fieldInts(fc, "dilations") == std::vector<int32_t>{2, 1}, "serialize dilations");
        check(fieldInts(fc, "group") == std::vector<int32_t>{2}, "serialize group");
        check(fieldInts(fc, "kernel_shape") == std::vector<int32_t>{3, 2}, "serialize kernel_shape");
        std::unique_ptr<IPluginV3> restored(convCreator->createPlugin("conv", fc, TensorRTPhase::kRUNTIME));
        check(restored != nullptr, "deserialize conv");
    }
    {
        int32_t zeroGroup = 0;
        PluginField bad[] = {PluginField("group", &zeroGroup, PluginFieldType::kINT32, 1)};
        PluginFieldCollection bfc{1, bad};
        std::unique_ptr<IPluginV3> none(convCreator->createPlugin("conv", &bfc, TensorRTPhase::kBUILD));
        check(none == nullptr, "group 0 rejected");
        PluginField shortPads[] = {PluginField("pads", pads, PluginFieldType::kINT32, 2)};
        PluginFieldCollection sfc{1, shortPads};
        std::unique_ptr<IPluginV3> none2(convCreator->createPlugin("conv", &sfc, TensorRTPhase::kBUILD));
        check(none2 == nullptr, "2 pads rejected");
        PluginFieldCollection empty{0, nullptr};
        std::unique_ptr<IPluginV3> defaults(convCreator->createPlugin("conv", &empty, TensorRTPhase::kBUILD));
        check(defaults != nullptr, "all-default conv attributes");
    }

    linear.reset();
    conv.reset();
    std::printf("%d checks, %d failed\n", gChecks, gFailures);
    return gFailures == 0 ? 0 : 1;
}
