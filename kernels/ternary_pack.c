/* Ternary weight packings. This comment is the normative description of the on-disk bytes
 * (docs/model-format.md refers here); the kernels read these bytes in place from the mmap.
 *
 * Common geometry (both formats)
 *   - Rows are grouped in tiles of 16 (bn_tern_row_tile() == 16); rows are padded with
 *     zero-weight rows up to a multiple of 16. Tile T holds rows 16T .. 16T+15.
 *   - Columns are padded with zero weights up to cols_p = bn_tern_cols_padded(fmt, cols).
 *   - Each tile is stored contiguously, tiles in order: tile T starts at T * tile_bytes.
 *     Inside a tile, 64-byte chunks follow in column order. Chunk g covers a run of
 *     consecutive columns (16 for I2, 20 for T5) for all 16 rows of the tile.
 *   - Inside a chunk, byte b = 4*r + j (r = row within tile 0..15, j = 0..3) holds the weights
 *     of row r at columns  c(g, p, j) = g*CW + 4*p + j  for every plane p (CW = chunk width).
 *     So "plane p" of a chunk, decoded to one byte per weight, is a 64-byte vector whose
 *     32-bit lane r holds 4 consecutive columns of row r: exactly the operand of
 *     vpdpbusd/vpmaddubsw against the 4 activations q[g*CW+4p .. +3] broadcast to all lanes.
 *     This lets the GEMV/GEMM accumulate 16 rows per register with no horizontal sums.
 *   - Every weight is stored as a digit d = t + 1 in {0, 1, 2} (so padding stores 1).
 *
 * BN_TERN_I2 (2 bits per weight; chunk = 16 columns; column block 64)
 *   bits 2p+1..2p of byte b (p = 0..3, p = 0 least significant) = d at column g*16 + 4p + j.
 *   tile_bytes = cols_p / 16 * 64 = 4 * cols_p; total = rows_p * cols_p / 4.
 *   The value 3 never occurs; decoders may treat it as anything.
 *
 * BN_TERN_T5 (5 trits per byte = 1.6 bits per weight; chunk = 20 columns; column block 20)
 *   For byte b the 5 digits d_0..d_4 (d_p at column g*20 + 4p + j) form the base-3 number
 *   v = d_0*81 + d_1*27 + d_2*9 + d_3*3 + d_4  (0..242), stored as byte = ceil(v * 256 / 243).
 *   Decoding needs no division: with y_0 = byte and y_{p+1} = (3 * y_p) mod 256,
 *   d_p = (3 * y_p) >> 8  (equivalently (y_p >= 86) + (y_p >= 171)).
 *   tile_bytes = cols_p / 20 * 64 = 3.2 * cols_p; total = rows_p * cols_p / 5.
 *
 * Both are plain bytes, so the layout has no endianness.
 */
#include "kimpl.h"

#include <string.h>

int bn_tern_row_tile(bn_tern_fmt fmt)
{
    (void)fmt;
    return BN_TILE_ROWS;
}

int bn_tern_col_block(bn_tern_fmt fmt)
{
    return fmt == BN_TERN_T5 ? BN_T5_COL_BLOCK : BN_I2_COL_BLOCK;
}

size_t bn_tern_cols_padded(bn_tern_fmt fmt, size_t cols)
{
    return bn_round_up(cols, (size_t)bn_tern_col_block(fmt));
}

static size_t tile_bytes(bn_tern_fmt fmt, size_t cols_p)
{
    return fmt == BN_TERN_T5 ? bn_t5_tile_bytes(cols_p) : bn_i2_tile_bytes(cols_p);
}

size_t bn_tern_packed_size(bn_tern_fmt fmt, size_t rows, size_t cols)
{
    size_t tiles = bn_round_up(rows, BN_TILE_ROWS) / BN_TILE_ROWS;
    return tiles * tile_bytes(fmt, bn_tern_cols_padded(fmt, cols));
}

/* Digit (t+1) of weight (row, col) of the unpadded matrix; padding reads as digit 1. */
static unsigned digit_at(const int8_t *t, size_t rows, size_t cols, size_t row, size_t col)
{
    if (row >= rows || col >= cols) return 1;
    return (unsigned)(t[row * cols + col] + 1);
}

static void pack_tile_i2(const int8_t *t, size_t rows, size_t cols, size_t cols_p, size_t r_base,
                         uint8_t *out)
{
    for (size_t g = 0; g < cols_p / BN_I2_CHUNK_COLS; g++, out += BN_CHUNK_BYTES)
        for (unsigned b = 0; b < BN_CHUNK_BYTES; b++) {
            size_t row = r_base + b / 4, c0 = g * BN_I2_CHUNK_COLS + b % 4;
            unsigned byte = 0;
            for (unsigned p = 0; p < 4; p++)
                byte |= digit_at(t, rows, cols, row, c0 + 4 * p) << (2 * p);
            out[b] = (uint8_t)byte;
        }
}

static void pack_tile_t5(const int8_t *t, size_t rows, size_t cols, size_t cols_p, size_t r_base,
                         uint8_t *out)
{
    for (size_t g = 0; g < cols_p / BN_T5_CHUNK_COLS; g++, out += BN_CHUNK_BYTES)
        for (unsigned b = 0; b < BN_CHUNK_BYTES; b++) {
            size_t row = r_base + b / 4, c0 = g * BN_T5_CHUNK_COLS + b % 4;
            unsigned v = 0;
            for (unsigned p = 0; p < 5; p++)
                v = v * 3 + digit_at(t, rows, cols, row, c0 + 4 * p);
            out[b] = (uint8_t)((v * 256 + 242) / 243);
        }
}

void bn_tern_pack(bn_tern_fmt fmt, const int8_t *t, size_t rows, size_t cols, uint8_t *out)
{
    size_t cols_p = bn_tern_cols_padded(fmt, cols), tb = tile_bytes(fmt, cols_p);
    size_t tiles = bn_round_up(rows, BN_TILE_ROWS) / BN_TILE_ROWS;
    for (size_t T = 0; T < tiles; T++) {
        if (fmt == BN_TERN_T5)
            pack_tile_t5(t, rows, cols, cols_p, T * BN_TILE_ROWS, out + T * tb);
        else
            pack_tile_i2(t, rows, cols, cols_p, T * BN_TILE_ROWS, out + T * tb);
    }
}

/* Digit p of a T5 byte, by the division-free rule the SIMD decoders use. */
static unsigned t5_digit(unsigned byte, unsigned p)
{
    unsigned y = byte;
    for (unsigned i = 0; i < p; i++) y = (3 * y) & 0xff;
    return (3 * y) >> 8;
}

void bn_tern_unpack_row(bn_tern_fmt fmt, const uint8_t *packed, size_t rows, size_t cols,
                        size_t row, int8_t *out)
{
    (void)rows;
    size_t cols_p = bn_tern_cols_padded(fmt, cols);
    const uint8_t *tile = packed + row / BN_TILE_ROWS * tile_bytes(fmt, cols_p);
    size_t r = row % BN_TILE_ROWS;
    size_t cw = fmt == BN_TERN_T5 ? BN_T5_CHUNK_COLS : BN_I2_CHUNK_COLS;
    for (size_t c = 0; c < cols; c++) {
        size_t g = c / cw, p = c % cw / 4, j = c % 4;
        unsigned byte = tile[g * BN_CHUNK_BYTES + 4 * r + j];
        unsigned d = fmt == BN_TERN_T5 ? t5_digit(byte, (unsigned)p) : (byte >> (2 * p)) & 3;
        out[c] = (int8_t)((int)d - 1);
    }
}
