# Generic code (scalar reference + dispatch) builds with the default flags; each SIMD variant
# is its own library with its own -m flags, and is only ever called after a CPUID check.
noinst_LIBRARIES += libbnkernels.a
libbnkernels_a_SOURCES = kernels/kernels.h kernels/half.h kernels/kernels_placeholder.c
BN_KERNEL_LIBS = libbnkernels.a
