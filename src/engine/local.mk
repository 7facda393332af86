noinst_LIBRARIES += libbnengine.a
libbnengine_a_CFLAGS = $(AM_CFLAGS) $(BN_EXT_CFLAGS)
libbnengine_a_SOURCES = src/engine/engine_placeholder.c
