/* AVX2 plane step of the screened lm_head (bn_u2_gemv; layout in kernels.h). One 32-byte
 * group is 128 digits against four 32-byte activation loads. Digits are not shifted down:
 * x & 0x03 is digit 0, x & 0x0c is 4 * digit 1, and the same of x >> 4 gives digits 2 and 3,
 * so a group costs one shift and four masks; the 4x-scaled sums are kept apart in int16 and
 * the unscaled ones multiplied by 4 on widening, and the row total divided by 4 (exact).
 * int16 bounds, |qx| <= 128: a vpmaddubsw lane is <= 2 * 12 * 128 = 3072 at scale 4, so
 * 4 groups (8 products) stay <= 24576. */
#include "simd_x86.h"

#include <immintrin.h>

static inline int32_t hsum_epi32(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

static inline __m256i ld(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* One group: digits 0 and 2 at scale 1 into *s1, digits 1 and 3 at scale 4 into *s4. */
static inline void group(const uint8_t *b, const int8_t *q, __m256i *s1, __m256i *s4)
{
    const __m256i m1 = _mm256_set1_epi8(0x03), m4 = _mm256_set1_epi8(0x0c);
    const __m256i x = ld(b), h = _mm256_srli_epi16(x, 4);
    const __m256i p0 = _mm256_maddubs_epi16(_mm256_and_si256(x, m1), ld(q));
    const __m256i p1 = _mm256_maddubs_epi16(_mm256_and_si256(x, m4), ld(q + 32));
    const __m256i p2 = _mm256_maddubs_epi16(_mm256_and_si256(h, m1), ld(q + 64));
    const __m256i p3 = _mm256_maddubs_epi16(_mm256_and_si256(h, m4), ld(q + 96));
    *s1 = _mm256_add_epi16(*s1, _mm256_add_epi16(p0, p2));
    *s4 = _mm256_add_epi16(*s4, _mm256_add_epi16(p1, p3));
}

/* sum_c digit(c) * q[c] over ng groups of one plane row at b; prefetches the row at pf. */
static inline int32_t row_dot(const uint8_t *b, const uint8_t *pf, const int8_t *q, size_t ng)
{
    const __m256i ones = _mm256_set1_epi16(1), fours = _mm256_set1_epi16(4);
    __m256i acc = _mm256_setzero_si256();
    for (size_t g = 0; g < ng;) {
        __m256i s1 = _mm256_setzero_si256(), s4 = s1;
        if (g + 4 <= ng) {
            _mm_prefetch((const char *)pf + 32 * g, _MM_HINT_T0);
            _mm_prefetch((const char *)pf + 32 * g + 64, _MM_HINT_T0);
#pragma GCC unroll 4
            for (int u = 0; u < 4; u++) group(b + 32 * (g + u), q + BN_U2_COLS * (g + u), &s1, &s4);
            g += 4;
        } else {
            _mm_prefetch((const char *)pf + 32 * g, _MM_HINT_T0);
            _mm_prefetch((const char *)pf + 32 * ng - 1, _MM_HINT_T0);
            for (; g < ng; g++) group(b + 32 * g, q + BN_U2_COLS * g, &s1, &s4);
        }
        acc = _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_madd_epi16(s1, fours),
                                                     _mm256_madd_epi16(s4, ones)));
    }
    return hsum_epi32(acc) / 4;
}

void bn_u2_gemv_avx2(const uint8_t *planes, size_t cols_padded, int k, const int8_t *qx,
                     const uint8_t *live, int32_t *acc, size_t r0, size_t r1)
{
    bn_u2_sweep(planes, cols_padded, k, qx, live, acc, r0, r1, row_dot);
}
