#!/bin/sh
# Rebuilds the component, shows what it declares, and re-locks the pipeline beside it.
set -eu
cd "$(dirname "$0")"
[ -d node_modules ] || npm install --no-audit --no-fund
# The world is this plugin kind's in the engine's WIT (wit/worlds.wit).{{disable_why}}
npx componentize-js src/plugin.js --wit wit --world-name {{world}}{{disable}} -o {{name}}.wasm
"${ENGINE:-engine}" plugins inspect {{name}}.wasm
"${ENGINE:-engine}" plugins lock --update pipeline.toml
