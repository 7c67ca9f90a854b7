//! Structured logging through the host. The host prefixes the plugin's name, removes secret
//! values and filters by the level the user chose.

pub use crate::bindings::engine::plugin::log::Level;

/// Writes one line at `level` with key-value fields.
pub fn write(level: Level, message: &str, fields: &[(&str, &str)]) {
    let fields: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    #[cfg(target_arch = "wasm32")]
    crate::bindings::engine::plugin::log::write(level, message, &fields);
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::record_log(level, message, fields);
}

pub fn debug(message: &str) {
    write(Level::Debug, message, &[]);
}
pub fn info(message: &str) {
    write(Level::Info, message, &[]);
}
pub fn warn(message: &str) {
    write(Level::Warn, message, &[]);
}
pub fn error(message: &str) {
    write(Level::Error, message, &[]);
}
