noinst_LIBRARIES += libbntext.a
libbntext_a_CFLAGS = $(AM_CFLAGS) $(BN_EXT_CFLAGS)
libbntext_a_SOURCES = \
	src/text/vocab.c src/text/vocab.h
