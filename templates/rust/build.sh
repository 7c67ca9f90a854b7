#!/bin/sh
# Rebuilds the component, shows what it declares, and re-locks the pipeline beside it.
# `--crate-type cdylib` on the command line (not in Cargo.toml) keeps `cargo test` native.
set -eu
cd "$(dirname "$0")"
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cargo rustc --release --lib --crate-type cdylib --target wasm32-wasip2
target_dir="${CARGO_TARGET_DIR:-target}"
cp "$target_dir/wasm32-wasip2/release/{{crate}}.wasm" {{name}}.wasm
"${ENGINE:-engine}" plugins inspect {{name}}.wasm
"${ENGINE:-engine}" plugins lock --update pipeline.toml
