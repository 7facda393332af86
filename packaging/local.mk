# Deployment files (nginx, systemd, Debian, Docker, SkyPilot): shipped in the tarball, each
# concern on its own lines.
EXTRA_DIST += packaging/install-deps.sh
EXTRA_DIST += packaging/nginx/bitnetd.conf
# Docker, SkyPilot/SkyServe and the scripts they share with the README path (docs/deploy.md).
EXTRA_DIST += packaging/scripts/common.sh packaging/scripts/build.sh \
	packaging/scripts/fetch-model.sh packaging/scripts/write-config.sh packaging/scripts/serve.sh \
	packaging/docker/Dockerfile packaging/docker/Dockerfile.dockerignore \
	packaging/docker/compose.yaml packaging/skypilot/bitnetd.yaml \
	packaging/skypilot/bitnetd-serve.yaml .ci/steps/30-deploy-scripts.sh
# systemd, `make install` and the Debian package (docs/deploy.md, "systemd"). The unit is
# installed only with ./configure --with-systemdsystemunitdir=DIR, its /usr/sbin and
# /etc/bitnetd paths rewritten to this build's sbindir and sysconfdir (no change for
# --prefix=/usr --sysconfdir=/etc, so Debian installs the checked-in file as it is).
EXTRA_DIST += packaging/systemd/bitnetd.service .ci/steps/20-package.sh \
	packaging/debian/changelog packaging/debian/control packaging/debian/copyright \
	packaging/debian/rules packaging/debian/bitnetd.install packaging/debian/bitnetd.docs \
	packaging/debian/bitnetd.postinst packaging/debian/bitnetd.postrm \
	packaging/debian/source/format packaging/debian/README.source
if BN_SYSTEMD_UNIT
systemdsystemunit_DATA = bitnetd.service
CLEANFILES += bitnetd.service
endif
bitnetd.service: $(srcdir)/packaging/systemd/bitnetd.service Makefile
	$(AM_V_GEN)sed -e 's|/usr/sbin/bitnetd|$(sbindir)/bitnetd|g' \
	    -e 's|/etc/bitnetd/|$(sysconfdir)/bitnetd/|g' \
	    $(srcdir)/packaging/systemd/bitnetd.service > $@.tmp && mv $@.tmp $@
# distcheck installs the unit too, under its own prefix.
AM_DISTCHECK_CONFIGURE_FLAGS = --with-systemdsystemunitdir=$$dc_install_base/lib/systemd/system
