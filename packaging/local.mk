# Deployment files (nginx, systemd, Debian, Docker, SkyPilot): shipped in the tarball, each
# concern on its own lines.
EXTRA_DIST += packaging/install-deps.sh
EXTRA_DIST += packaging/nginx/bitnetd.conf
