noinst_LIBRARIES += libbnbase.a
libbnbase_a_CFLAGS = $(AM_CFLAGS) $(BN_EXT_CFLAGS)
libbnbase_a_SOURCES = \
	src/base/error.c src/base/error.h \
	src/base/file.c src/base/file.h \
	src/base/parse.c src/base/parse.h \
	src/base/checked.h
