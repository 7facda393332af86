noinst_LIBRARIES += libbnmodel.a
libbnmodel_a_CFLAGS = $(AM_CFLAGS) $(BN_EXT_CFLAGS)
libbnmodel_a_SOURCES = \
	src/model/model.h
