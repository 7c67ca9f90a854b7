#!/bin/sh
# Rebuilds the component, shows what it declares, and re-locks the pipeline beside it.
# componentize-py comes from requirements.txt (pip install -r requirements.txt).
set -eu
cd "$(dirname "$0")"
# The world is this plugin kind's in the engine's WIT (wit/worlds.wit).
"${COMPONENTIZE_PY:-componentize-py}" -d wit -w {{world}} componentize app -o {{name}}.wasm
"${ENGINE:-engine}" plugins inspect {{name}}.wasm
"${ENGINE:-engine}" plugins lock --update pipeline.toml
