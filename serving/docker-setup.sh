#!/bin/sh
# Runs as root while the image is built, after the non-root `bentoml` user exists and before `USER bentoml`.
# * the registry mount point (read-only is enough) at /var/lib/pi2i/registry;
# * a `pi2i` launcher, so the image also runs `pi2i serve --registry R --port P` (k8s/base/serving.yaml).
#   The pi2i sources ship in the bento's src/ (PYTHONPATH in bentofile.yaml), not as an installed package.
set -eu
mkdir -p /var/lib/pi2i/registry
chown -R bentoml:bentoml /var/lib/pi2i
cat > /usr/local/bin/pi2i <<'SH'
#!/bin/sh
exec python -c 'import sys; sys.argv[0] = "pi2i"; from pi2i.cli import main; main()' "$@"
SH
chmod 755 /usr/local/bin/pi2i
