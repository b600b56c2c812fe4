#!/bin/bash
# Wrap the tree `make install DESTDIR=... PREFIX=/usr` staged into a Debian package, with
# dpkg-deb alone (no debhelper needed on the build machine).
#
# How the Python dependencies travel: inside the package, in its private venv
# (/usr/lib/anycast-toolkit), as the wheels the suite ran with. Debian 12's python3-cffi
# (1.15), python3-cryptography (38), python3-redis (4.3) and python3-dnspython (2.3) are older
# than the versions pyproject.toml requires and the suite tests, and icmplib is not packaged;
# a private venv keeps the daemons independent of what else the host installs. The package
# depends only on Debian's python3 (3.11: the venv's site-packages is lib/python3.11) and the
# C libraries its compiled parts link or load (libc6; libssl3 where the CPU lacks AES-NI/SHA-NI).
set -euo pipefail
root=${1:?staged tree}; out=${2:?output directory}
here=$(cd "$(dirname "$0")" && pwd)
name=anycast-toolkit
version=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
revision=1
arch=$(dpkg --print-architecture)
venv=$root/usr/lib/$name

# build tools are not shipped
"$venv/bin/python" -m pip uninstall -q -y pip setuptools wheel >/dev/null 2>&1 || true
rm -f "$venv"/bin/activate* "$venv"/bin/Activate.ps1 "$venv"/bin/pip* "$venv"/bin/wheel \
  "$venv"/bin/cffi-gen-src
rmdir "$venv/include/python3.11" "$venv/include" 2>/dev/null || true
case $(readlink -f "$venv/bin/python3") in
  /usr/bin/python3*) ;;
  *) echo "the venv must run on Debian's /usr/bin/python3, not $(readlink -f "$venv/bin/python3")" >&2
     exit 1;;
esac
"$venv/bin/python" -I -c 'import relay.fastpath as f; assert f.available(), "no C fast path"' || {
  echo "the C data plane was not built (python3-dev, libssl-dev missing?)" >&2; exit 1; }

doc=$root/usr/share/doc/$name
install -d "$doc"
cp -r README.md docs "$doc/"
{
  echo "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
  echo "Upstream-Name: $name"
  echo
  echo "Files: *"
  echo "License: GPL-3.0-or-later"
  echo " On Debian systems the full text of the GNU General Public License version 3 is in"
  echo " /usr/share/common-licenses/GPL-3."
} > "$doc/copyright"
printf '%s (%s-%s) bookworm; urgency=medium\n\n  * Built from the sources.\n\n -- anycast-toolkit maintainers <root@localhost>  %s\n' \
  "$name" "$version" "$revision" "$(date -R -u -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}")" \
  | gzip -9n > "$doc/changelog.Debian.gz"

install -d "$root/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version-$revision/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
  "$here/control.in" > "$root/DEBIAN/control"
(cd "$root" && find etc -type f | sed 's|^|/|' | sort) > "$root/DEBIAN/conffiles"
for script in postinst prerm postrm; do
  install -m 0755 "$here/$script" "$root/DEBIAN/$script"
done
install -m 0644 "$here/triggers" "$root/DEBIAN/triggers"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -print0 | sed -z 's|^\./||' \
  | sort -z | xargs -0 md5sum) > "$root/DEBIAN/md5sums"
mkdir -p "$out"
deb=$out/${name}_${version}-${revision}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "built $deb ($(du -h "$deb" | cut -f1))"
