/* Run-time dispatch: one table of function pointers per ISA variant; the active table is
 * chosen once (pthread_once) from CPUID, or from BITNET_ISA, and can be replaced by
 * bn_kernels_force() (meant for start-up and tests: not synchronized with running kernels). */
#include "kimpl.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

const bn_ktab bn_ktab_scalar = {
    .quant_act = bn_quant_act_scalar,
    .gemv_i2 = bn_tern_gemv_i2_scalar,
    .gemv_t5 = bn_tern_gemv_t5_scalar,
    .gemm_i2 = bn_tern_gemm_i2_scalar,
    .gemm_t5 = bn_tern_gemm_t5_scalar,
    .rmsnorm = bn_rmsnorm_scalar,
    .softmax = bn_softmax_scalar,
    .relu2_mul = bn_relu2_mul_scalar,
    .silu_mul = bn_silu_mul_scalar,
    .attn_head = bn_attn_head_scalar,
    .attn_group = bn_attn_group_scalar,
    .gemv_f16 = bn_gemv_f16_scalar,
    .gemv_i8row = bn_gemv_i8row_scalar,
    .gemm_i8row = bn_gemm_i8row_scalar,
    .f16_to_f32 = bn_f16_to_f32_scalar,
    .f32_to_f16 = bn_f32_to_f16_scalar,
    .u2_gemv = bn_u2_gemv_scalar,
};

static const char *const isa_names[BN_ISA_COUNT] = {"scalar", "avx2", "avx512", "avx512vnni"};

const char *bn_isa_name(bn_isa isa)
{
    return (unsigned)isa < BN_ISA_COUNT ? isa_names[isa] : "unknown";
}

int bn_isa_parse(const char *name)
{
    for (int i = 0; name && i < BN_ISA_COUNT; i++)
        if (strcmp(name, isa_names[i]) == 0) return i;
    return -1;
}

const bn_ktab *bn_ktab_get(bn_isa isa)
{
    switch (isa) {
    case BN_ISA_SCALAR: return &bn_ktab_scalar;
#ifdef BN_X86_64
    case BN_ISA_AVX2: return &bn_ktab_avx2;
    case BN_ISA_AVX512: return &bn_ktab_avx512;
    case BN_ISA_AVX512VNNI: return &bn_ktab_avx512vnni;
#endif
    default: return NULL;
    }
}

#ifdef BN_X86_64
#include <cpuid.h>
/* F16C from CPUID.1:ECX[29]: clang's __builtin_cpu_supports does not know "f16c". */
static int cpu_has_f16c(void)
{
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}
#endif

static int cpu_has(bn_isa isa)
{
#ifdef BN_X86_64
    __builtin_cpu_init();
    /* __builtin_cpu_supports also checks that the OS saves the ymm/zmm state (XCR0). */
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               cpu_has_f16c();
    int avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    switch (isa) {
    case BN_ISA_SCALAR: return 1;
    case BN_ISA_AVX2: return avx2;
    case BN_ISA_AVX512: return avx512;
    case BN_ISA_AVX512VNNI: return avx512 && __builtin_cpu_supports("avx512vnni");
    default: return 0;
    }
#else
    return isa == BN_ISA_SCALAR;
#endif
}

int bn_kernels_isa_supported(bn_isa isa)
{
    return (unsigned)isa < BN_ISA_COUNT && bn_ktab_get(isa) != NULL && cpu_has(isa);
}

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static _Atomic(const bn_ktab *) g_tab;
static _Atomic int g_isa;

static void choose_default(void)
{
    int isa = BN_ISA_SCALAR;
    for (int i = BN_ISA_COUNT - 1; i > 0; i--)
        if (bn_kernels_isa_supported((bn_isa)i)) { isa = i; break; }
    const char *env = getenv("BITNET_ISA");
    int want = env && *env ? bn_isa_parse(env) : -1;
    /* An unknown or unsupported request falls back to the best supported variant rather
     * than crashing with SIGILL later. */
    if (want >= 0 && bn_kernels_isa_supported((bn_isa)want)) isa = want;
    atomic_store(&g_isa, isa);
    atomic_store(&g_tab, bn_ktab_get((bn_isa)isa));
}

static inline const bn_ktab *tab(void)
{
    pthread_once(&g_once, choose_default);
    return atomic_load_explicit(&g_tab, memory_order_relaxed);
}

bn_isa bn_kernels_isa(void)
{
    pthread_once(&g_once, choose_default);
    return (bn_isa)atomic_load(&g_isa);
}

int bn_kernels_force(bn_isa isa)
{
    pthread_once(&g_once, choose_default);
    if (!bn_kernels_isa_supported(isa)) return -1;
    atomic_store(&g_isa, (int)isa);
    atomic_store(&g_tab, bn_ktab_get(isa));
    return 0;
}

/* ---- public entry points ------------------------------------------------------------ */

float bn_quant_act(const float *x, size_t n, size_t n_padded, int8_t *q)
{
    return tab()->quant_act(x, n, n_padded, q);
}

void bn_tern_gemv(bn_tern_fmt fmt, const uint8_t *w, size_t rows, size_t cols, const int8_t *q,
                  float act_scale, float w_scale, float *y, size_t r0, size_t r1)
{
    const bn_ktab *t = tab();
    (fmt == BN_TERN_T5 ? t->gemv_t5 : t->gemv_i2)(w, rows, cols, q, act_scale, w_scale, y, r0, r1);
}

void bn_tern_gemm(bn_tern_fmt fmt, const uint8_t *w, size_t rows, size_t cols, const int8_t *q,
                  const float *act_scale, size_t n, float w_scale, float *y, size_t ldy,
                  size_t r0, size_t r1)
{
    const bn_ktab *t = tab();
    (fmt == BN_TERN_T5 ? t->gemm_t5 : t->gemm_i2)(w, rows, cols, q, act_scale, n, w_scale, y,
                                                   ldy, r0, r1);
}

void bn_rmsnorm(float *out, const float *x, const float *w, size_t n, float eps)
{
    tab()->rmsnorm(out, x, w, n, eps);
}

void bn_softmax(float *x, size_t n) { tab()->softmax(x, n); }

void bn_relu2_mul(float *out, const float *g, const float *u, size_t n)
{
    tab()->relu2_mul(out, g, u, n);
}

void bn_silu_mul(float *out, const float *g, const float *u, size_t n)
{
    tab()->silu_mul(out, g, u, n);
}

void bn_attn_head(float *out, const float *q, const uint16_t *k, const uint16_t *v, size_t n_pos,
                  size_t kv_stride, int head_dim, float scale, float *scratch)
{
    tab()->attn_head(out, q, k, v, n_pos, kv_stride, head_dim, scale, scratch);
}

void bn_attn_group(float *out, const float *q, int n_q, const uint16_t *k, const uint16_t *v,
                   size_t n_pos, size_t kv_stride, int head_dim, float scale, float *scratch)
{
    tab()->attn_group(out, q, n_q, k, v, n_pos, kv_stride, head_dim, scale, scratch);
}

void bn_gemv_f16(const uint16_t *w, size_t cols, const float *x, float *y, size_t r0, size_t r1)
{
    tab()->gemv_f16(w, cols, x, y, r0, r1);
}

void bn_gemv_i8row(const int8_t *w, const float *row_scale, size_t cols, size_t cols_padded,
                   const int8_t *qx, float x_scale, float *y, size_t r0, size_t r1)
{
    tab()->gemv_i8row(w, row_scale, cols, cols_padded, qx, x_scale, y, r0, r1);
}

void bn_gemm_i8row(const int8_t *w, const float *row_scale, size_t cols, size_t cols_padded,
                   const int8_t *qx, size_t ldq, const float *x_scale, size_t m, float *y, size_t ldy,
                   size_t r0, size_t r1)
{
    tab()->gemm_i8row(w, row_scale, cols, cols_padded, qx, ldq, x_scale, m, y, ldy, r0, r1);
}

void bn_u2_gemv(const uint8_t *planes, size_t cols_padded, int k, const int8_t *qx,
                const uint8_t *live, int32_t *acc, size_t r0, size_t r1)
{
    tab()->u2_gemv(planes, cols_padded, k, qx, live, acc, r0, r1);
}

void bn_f16_to_f32_row(const uint16_t *in, float *out, size_t n) { tab()->f16_to_f32(in, out, n); }

void bn_f32_to_f16_row(const float *in, uint16_t *out, size_t n) { tab()->f32_to_f16(in, out, n); }
