"""TensorRT path of the export stage: the binary-residual plugin (CUDA + IPluginV3), engine builds.

Submodules import nothing heavy: ``numpy_ref`` needs numpy, ``build`` imports TensorRT lazily,
the GPU check of the kernels is ``bench/gpu_check.py`` (a script for a CUDA machine with CuPy).
"""
