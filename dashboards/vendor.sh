#!/usr/bin/env bash
# Copy the dashboard's charting library from node_modules into vendor/, so `regime3 up` serves
# it without npm or a CDN. Run after changing a version in package.json:
#   ./vendor.sh          npm ci (from package-lock.json), copy, record versions and sha256
#   ./vendor.sh --check  verify vendor/ against vendor/VERSIONS (no npm, no network)
set -euo pipefail
cd "$(dirname "$0")"

files=(uplot/dist/uPlot.esm.js uplot/dist/uPlot.min.css uplot/LICENSE)

if [[ "${1:-}" == "--check" ]]; then
    # VERSIONS lines after the header are "<sha256>  <file>", the format sha256sum -c reads.
    (cd vendor && grep -v '^#' VERSIONS | sha256sum --check --strict --quiet)
    echo "vendor/ matches vendor/VERSIONS"
    exit 0
fi

npm ci --no-audit --no-fund
rm -rf vendor
mkdir -p vendor/uplot
for f in "${files[@]}"; do
    cp "node_modules/$f" "vendor/uplot/$(basename "$f")"
done
version=$(node -p 'require("./node_modules/uplot/package.json").version')
{
    echo "# Vendored by dashboards/vendor.sh from npm (package-lock.json); do not edit by hand."
    echo "# uplot $version (MIT, see uplot/LICENSE)"
    (cd vendor && sha256sum uplot/*)
} > vendor/VERSIONS
cat vendor/VERSIONS
