# The server layer (master, workers, HTTP), over engine/model/text. libbnserver.a holds every
# module but the master's process and HTTP glue, which only the bitnetd binary links.
noinst_LIBRARIES += libbnserver.a
libbnserver_a_CFLAGS = $(AM_CFLAGS) $(BN_EXT_CFLAGS)
libbnserver_a_SOURCES = \
	src/server/config.c src/server/config.h \
	src/server/placement.c src/server/placement.h \
	src/server/channel.c src/server/channel.h \
	src/server/worker.c src/server/worker.h \
	src/server/prompt_cache.c src/server/prompt_cache.h \
	src/server/openai.c src/server/openai.h \
	src/server/metrics.c src/server/metrics.h \
	src/server/log.c src/server/log.h \
	src/server/weights.c src/server/weights.h \
	src/server/scheduler.c src/server/scheduler.h \
	src/server/queue.c src/server/queue.h \
	src/server/limits.c src/server/limits.h

# A daemon: installed to sbin (/usr/sbin/bitnetd from the Debian package), beside nginx and sshd.
sbin_PROGRAMS = bitnetd
bitnetd_CFLAGS = $(AM_CFLAGS) $(BN_EXT_CFLAGS) -DBN_SYSCONFDIR='"$(sysconfdir)"' -DBN_VERSION='"$(PACKAGE_VERSION)"'
bitnetd_SOURCES = src/bitnetd.c \
	src/server/master.c src/server/master.h \
	src/server/http.c src/server/http.h \
	src/server/chat_page.h
# The chat page (GET /) is embedded in the binary: chat_page.c is generated from the .html
# (a .c, not a header, so the object's own rule orders it: no BUILT_SOURCES needed).
nodist_bitnetd_SOURCES = src/server/chat_page.c
CLEANFILES += src/server/chat_page.c src/server/chat_page.c.tmp
EXTRA_DIST += src/server/chat_page.html src/server/embed.sh
src/server/chat_page.c: $(srcdir)/src/server/chat_page.html $(srcdir)/src/server/embed.sh
	$(AM_V_GEN)$(MKDIR_P) src/server && \
	$(SHELL) $(srcdir)/src/server/embed.sh $(srcdir)/src/server/chat_page.html bn_chat_page \
	    server/chat_page.h > $@.tmp && mv $@.tmp $@
bitnetd_LDADD = libbnserver.a $(BN_CORE_LIBS) $(BN_EXT_LIBS)
# The documented default configuration, at the path the systemd unit and docs/deploy.md use.
bitnetddir = $(sysconfdir)/bitnetd
dist_bitnetd_DATA = conf/bitnetd.conf
