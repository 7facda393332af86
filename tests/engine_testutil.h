/* Allocation counting for the engine tests: malloc, calloc and realloc wrapped by the linker
 * (-Wl,--wrap=... as BN_ENGINE_TEST_WRAP in tests/engine.mk) and counted in bn_test_n_allocs.
 *
 * This header DEFINES the __wrap_ functions: include it from exactly one translation unit of a
 * test program, and only in a program linked with BN_ENGINE_TEST_WRAP (else __real_malloc is
 * undefined). Check's own assertions allocate: read the counter around the call under test
 * alone. */
#ifndef BN_ENGINE_TESTUTIL_H
#define BN_ENGINE_TESTUTIL_H

#include <stddef.h>

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t m);
void *__wrap_realloc(void *p, size_t n);

static long bn_test_n_allocs;   /* calls to malloc, calloc and realloc so far */

void *__wrap_malloc(size_t n) { bn_test_n_allocs++; return __real_malloc(n); }
void *__wrap_calloc(size_t n, size_t m) { bn_test_n_allocs++; return __real_calloc(n, m); }
void *__wrap_realloc(void *p, size_t n) { bn_test_n_allocs++; return __real_realloc(p, n); }

#endif
