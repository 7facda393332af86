/* Generated table: code points that are letters (L) or numbers (N) in Unicode 16.0 but that
 * PCRE2 10.42's tables (Unicode 14.0) do not classify so. pretokenize.c adds them to PCRE2's
 * \p{L} and \p{N}, so the split follows Unicode 16.0, the version of the reference regex engine
 * (Oniguruma 6.9.10 inside Hugging Face tokenizers 0.23). With a PCRE2 that has newer tables
 * these code points are in \p{L} / \p{N} already and adding them changes nothing.
 *
 * How it was made: every code point was tested against /\p{L}/u and /\p{N}/u in Node.js 20
 * (ICU 78, Unicode 17.0) and against PCRE2 10.42; of the code points that only Node matched,
 * those assigned after Unicode 16.0 were dropped by asking the reference tokenizer (npm
 * tokenizers 0.23.2) to encode X + "'s": the contraction "'s" comes out as one token exactly when
 * X is a letter or number to it. No code point is in PCRE2's classes but not in Node's, and none
 * moved between L and N. Regenerate the same way when the reference or PCRE2 changes. */
#ifndef BN_TEXT_UNICODE_EXTRA_H
#define BN_TEXT_UNICODE_EXTRA_H

/* 35 ranges, 9272 code points */
#define BN_L_EXTRA \
    "\\x{1C89}-\\x{1C8A}\\x{A7CB}-\\x{A7CD}\\x{A7DA}-\\x{A7DC}\\x{105C0}-\\x{105F3}" \
    "\\x{10D4A}-\\x{10D65}\\x{10D6F}-\\x{10D85}\\x{10EC2}-\\x{10EC4}\\x{1123F}-\\x{11240}" \
    "\\x{11380}-\\x{11389}\\x{1138B}\\x{1138E}\\x{11390}-\\x{113B5}\\x{113B7}\\x{113D1}" \
    "\\x{113D3}\\x{11BC0}-\\x{11BE0}\\x{11F02}\\x{11F04}-\\x{11F10}\\x{11F12}-\\x{11F33}" \
    "\\x{1342F}\\x{13441}-\\x{13446}\\x{13460}-\\x{143FA}\\x{16100}-\\x{1611D}" \
    "\\x{16D40}-\\x{16D6C}\\x{18CFF}\\x{1B132}\\x{1B155}\\x{1DF25}-\\x{1DF2A}" \
    "\\x{1E030}-\\x{1E06D}\\x{1E4D0}-\\x{1E4EB}\\x{1E5D0}-\\x{1E5ED}\\x{1E5F0}\\x{2B739}" \
    "\\x{2EBF0}-\\x{2EE5D}\\x{31350}-\\x{323AF}"

/* 10 ranges, 120 code points */
#define BN_N_EXTRA \
    "\\x{10D40}-\\x{10D49}\\x{116D0}-\\x{116E3}\\x{11BF0}-\\x{11BF9}\\x{11F50}-\\x{11F59}" \
    "\\x{16130}-\\x{16139}\\x{16D70}-\\x{16D79}\\x{1CCF0}-\\x{1CCF9}\\x{1D2C0}-\\x{1D2D3}" \
    "\\x{1E4F0}-\\x{1E4F9}\\x{1E5F1}-\\x{1E5FA}"

#endif
