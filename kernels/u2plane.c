/* The int8 lm_head as 2-bit planes (layout: kernels.h): the packer, the row inspector, and the
 * scalar reference of the plane step, which every SIMD variant must equal exactly. */
#include "kimpl.h"

#include <string.h>

/* Byte j of 32-byte group g of plane k: digit k of elements 128g + 32i + j, i = 0..3, at
 * bits 2i+1..2i. q == NULL packs code 0 (the padding rows of the last tile). All four
 * planes of a row in one pass over its codes. */
static void pack_row(const int8_t *q, size_t cols_padded, uint8_t *const d[BN_U2_PLANES])
{
    for (size_t g = 0; g < cols_padded / BN_U2_COLS; g++)
        for (size_t j = 0; j < 32; j++) {
            unsigned b[BN_U2_PLANES] = {0};
            for (unsigned i = 0; i < 4; i++) {
                const unsigned p = (unsigned)((q ? q[g * BN_U2_COLS + 32 * i + j] : 0) + 128);
                for (int k = 0; k < BN_U2_PLANES; k++) b[k] |= ((p >> (6 - 2 * k)) & 3u) << (2 * i);
            }
            for (int k = 0; k < BN_U2_PLANES; k++) d[k][g * 32 + j] = (uint8_t)b[k];
        }
}

void bn_u2_pack(const int8_t *q, size_t ldq, size_t rows, size_t cols_padded, uint8_t *out)
{
    const size_t rows_p = bn_u2_size(rows, cols_padded) / (cols_padded ? cols_padded : 1);
    for (size_t r = 0; r < rows_p && cols_padded; r++) {
        uint8_t *d[BN_U2_PLANES];
        for (int k = 0; k < BN_U2_PLANES; k++) d[k] = out + bn_u2_row_off(cols_padded, r, k);
        pack_row(r < rows ? q + r * ldq : NULL, cols_padded, d);
    }
}

void bn_u2_unpack_row(const uint8_t *planes, size_t cols_padded, size_t r, int k, uint8_t *digits)
{
    const uint8_t *b = bn_u2_row(planes, cols_padded, r, k);
    for (size_t c = 0; c < cols_padded; c++)
        digits[c] = (uint8_t)((b[c / BN_U2_COLS * 32 + c % 32] >> (2 * (c % BN_U2_COLS / 32))) & 3);
}

void bn_u2_gemv_scalar(const uint8_t *planes, size_t cols_padded, int k, const int8_t *qx,
                       const uint8_t *live, int32_t *acc, size_t r0, size_t r1)
{
    for (size_t r = r0; r < r1; r++) {
        if (live && !live[r]) continue;
        const uint8_t *b = bn_u2_row(planes, cols_padded, r, k);
        int32_t dot = 0;   /* |dot| <= 3 * 128 * cols_padded: no overflow */
        for (size_t g = 0; g < cols_padded / BN_U2_COLS; g++, b += 32)
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 32; j++)
                    dot += ((b[j] >> (2 * i)) & 3) * qx[g * BN_U2_COLS + 32 * (size_t)i + (size_t)j];
        acc[r] = bn_u2_step(acc[r], dot);
    }
}
