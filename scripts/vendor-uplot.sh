#!/bin/sh
# Re-vendor uPlot into the dashboard's static folder from the npm registry.
#
#   scripts/vendor-uplot.sh            # the newest release
#   scripts/vendor-uplot.sh 1.6.32     # a given version
#
# Needs npm (only here: the package itself needs Python alone at run time). It copies the built
# dist/uPlot.iife.min.js and dist/uPlot.min.css, and the licence, then rewrites VENDORED.md.
set -eu

version="${1:-latest}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
static="$repo/src/safeship/api/dashboard/static"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cd "$work"
tarball="$(npm pack --silent "uplot@$version")"
tar -xzf "$tarball"
resolved="$(node -p "require('./package/package.json').version")"
integrity="$(npm view --silent "uplot@$resolved" dist.integrity)"

cp package/dist/uPlot.iife.min.js "$static/uPlot.iife.min.js"
cp package/dist/uPlot.min.css "$static/uPlot.min.css"
cp package/LICENSE "$static/uPlot.LICENSE.txt"

cat > "$static/VENDORED.md" <<DOC
# Vendored front-end files

| file | from | version | licence |
|---|---|---|---|
| \`uPlot.iife.min.js\` | npm package \`uplot\`, \`dist/uPlot.iife.min.js\` | $resolved | MIT (\`uPlot.LICENSE.txt\`) |
| \`uPlot.min.css\` | npm package \`uplot\`, \`dist/uPlot.min.css\` | $resolved | MIT (\`uPlot.LICENSE.txt\`) |

Registry integrity of the tarball: \`$integrity\`.

The files are copied unchanged from the package's built \`dist/\` folder. To rebuild (needs npm;
the installed package needs Python alone):

    scripts/vendor-uplot.sh            # the newest uplot release
    scripts/vendor-uplot.sh $resolved     # this version again

\`app.js\` and \`dashboard.css\` are the dashboard's own.
DOC
echo "uPlot $resolved vendored into $static"
