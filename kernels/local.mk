# Generic code (scalar reference + dispatch + packing) builds with the default flags; each
# SIMD variant is its own library with its own -m flags, and is only ever called after a
# CPUID check in dispatch.c. No -march=native: one binary runs on any x86-64.
noinst_LIBRARIES += libbnkernels.a
libbnkernels_a_SOURCES = kernels/kernels.h kernels/half.h kernels/kimpl.h \
	kernels/dispatch.c kernels/ternary_pack.c kernels/ternary_scalar.c kernels/float_scalar.c \
	kernels/u2plane.c
# dispatch.c references the variant tables, so the generic library comes first.
BN_KERNEL_LIBS = libbnkernels.a

if BN_X86_64
noinst_LIBRARIES += libbnkernels_avx2.a libbnkernels_avx512.a
BN_AVX2_FLAGS = -mavx2 -mfma -mf16c
# VNNI is deliberately absent: vpdpbusd appears only as inline asm in the functions of the
# VNNI variant, so the compiler can never put one into the plain AVX512 variant.
BN_AVX512_FLAGS = -mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512vl -mavx512dq
libbnkernels_avx2_a_CFLAGS = $(AM_CFLAGS) $(BN_AVX2_FLAGS)
libbnkernels_avx2_a_SOURCES = kernels/kimpl.h kernels/simd_x86.h kernels/float_x86.h \
	kernels/ternary_avx2.c kernels/float_avx2.c kernels/u2plane_avx2.c
libbnkernels_avx512_a_CFLAGS = $(AM_CFLAGS) $(BN_AVX512_FLAGS)
libbnkernels_avx512_a_SOURCES = kernels/kimpl.h kernels/simd_x86.h kernels/float_x86.h \
	kernels/ternary_avx512.c kernels/ternary_avx512_tmpl.h kernels/float_avx512.c \
	kernels/u2plane_avx512.c
BN_KERNEL_LIBS += libbnkernels_avx512.a libbnkernels_avx2.a
endif
