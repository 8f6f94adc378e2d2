#!/usr/bin/env bash
# Builds the Debian package (ferry-appliance_*.deb in cargo's target folder, debian/) with
# cargo-deb, which finds the release binaries wherever CARGO_TARGET_DIR puts them: both
# binaries, man pages and shell completions generated from the CLI definitions, the default
# configuration, the hardened systemd unit and the maintainer scripts that create the `ferry`
# user and /var/lib/ferry. Then checks the package with dpkg-deb. Installs cargo-deb if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-deb >/dev/null || cargo install --locked --quiet cargo-deb --version 3.8.0
bin=$(scripts/release-bins.sh ferry-builder ferry-appliance)
rm -rf appliance/packaging/generated
cargo xtask dist-assets appliance/packaging/generated
deb=$(cargo deb --locked --no-build -p ferry-appliance 2>/dev/null | tail -1)
echo "built $deb"

# The check: what an operator relies on is in the package, with the right modes.
contents=$(dpkg-deb --contents "$deb")
for path in ./usr/bin/ferry-appliance ./usr/bin/ferry ./etc/ferry/appliance.toml \
    ./usr/lib/systemd/system/ferry-appliance.service ./usr/lib/systemd/system/ferry-appliance.socket \
    ./usr/share/man/man1/ferry-appliance.1.gz \
    ./usr/share/man/man1/ferry.1.gz ./usr/share/bash-completion/completions/ferry-appliance \
    ./usr/share/zsh/vendor-completions/_ferry ./usr/share/fish/vendor_completions.d/ferry.fish \
    ./usr/share/doc/ferry-appliance/operator-guide.md; do
    grep -q " $path\$" <<<"$contents" || { echo "missing from the package: $path" >&2; exit 1; }
done
grep -q -- "-rwxr-xr-x .* ./usr/bin/ferry-appliance$" <<<"$contents" || { echo "ferry-appliance is not executable" >&2; exit 1; }
grep -q -- "-rw-r----- .* ./etc/ferry/appliance.toml$" <<<"$contents" || { echo "the configuration is not 0640" >&2; exit 1; }
control=$(dpkg-deb --field "$deb" Package Depends)
grep -q "^Package: ferry-appliance" <<<"$control" && grep -q "adduser" <<<"$control" || {
    echo "unexpected control fields: $control" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb --ctrl-tarfile "$deb" | tar -x -C "$work"
grep -q "adduser --system" "$work/postinst" && grep -q "conffiles" <(ls "$work") || {
    echo "maintainer scripts or conffiles missing" >&2; exit 1; }
grep -q "/etc/ferry/appliance.toml" "$work/conffiles"
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work" ./etc/ferry/appliance.toml ./usr/lib/systemd/system/ferry-appliance.service
cmp "$work/etc/ferry/appliance.toml" <("$bin/ferry-appliance" default-config)
grep -q "^User=ferry" "$work/usr/lib/systemd/system/ferry-appliance.service"
echo "package checked: $(du -h "$deb" | cut -f1)"
