//! `engine plugins new`: writes a plugin project that builds as it is, from the templates in
//! `templates/` (embedded here, so an installed engine carries them).

use super::CommandError;
use crate::runtime::PluginKind;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Provider,
    Strategy,
    Health,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Js,
    Python,
}

#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// The plugin's name: lowercase letters, digits and dashes, starting with a letter
    name: String,
    /// What the plugin is
    #[arg(long, value_enum)]
    kind: Kind,
    /// What it is written in
    #[arg(long, value_enum, default_value = "rust")]
    lang: Lang,
    /// Where to write it [default: ./NAME]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Rust: the engine SDK's directory (the engine's source tree's sdk/) [default: the one this
    /// engine was built from, when it is still there]
    #[arg(long, value_name = "DIR")]
    sdk: Option<PathBuf>,
}

impl Kind {
    fn plugin_kind(self) -> PluginKind {
        match self {
            Kind::Provider => PluginKind::Provider,
            Kind::Strategy => PluginKind::Strategy,
            Kind::Health => PluginKind::Health,
        }
    }
}

/// One file of a template: where it goes in the project, and its text with placeholders.
struct File {
    path: &'static str,
    text: &'static str,
}

macro_rules! template {
    ($path:literal, $source:literal) => {
        File {
            path: $path,
            text: include_str!(concat!("../../../templates/", $source)),
        }
    };
}

macro_rules! wit {
    ($($name:literal),*) => {
        [$(File { path: concat!("wit/", $name), text: include_str!(concat!("../../../wit/", $name)) }),*]
    };
}

/// The engine's WIT, which the JavaScript and Python toolchains build against.
const WIT: [File; 14] = wit!(
    "types.wit",
    "host.wit",
    "provider.wit",
    "strategy.wit",
    "health.wit",
    "resources.wit",
    "worlds.wit",
    "deps/cli.wit",
    "deps/clocks.wit",
    "deps/filesystem.wit",
    "deps/http.wit",
    "deps/io.wit",
    "deps/random.wit",
    "deps/sockets.wit"
);

fn files(lang: Lang, kind: Kind) -> Vec<File> {
    let mut files = vec![template!("README.md", "project-README.md")];
    files.push(match kind {
        // JavaScript has no files: its provider talks to an HTTP platform (platform.js).
        Kind::Provider if lang == Lang::Js => {
            template!("pipeline.toml", "pipelines/provider-http.toml")
        }
        Kind::Provider => template!("pipeline.toml", "pipelines/provider.toml"),
        Kind::Strategy => template!("pipeline.toml", "pipelines/strategy.toml"),
        Kind::Health => template!("pipeline.toml", "pipelines/health.toml"),
    });
    match lang {
        Lang::Rust => {
            files.push(template!("Cargo.toml", "rust/Cargo.toml"));
            files.push(template!("build.sh", "rust/build.sh"));
            files.push(match kind {
                Kind::Provider => template!("src/lib.rs", "rust/provider/src/lib.rs"),
                Kind::Strategy => template!("src/lib.rs", "rust/strategy/src/lib.rs"),
                Kind::Health => template!("src/lib.rs", "rust/health/src/lib.rs"),
            });
        }
        Lang::Js => {
            files.push(template!("package.json", "js/package.json"));
            files.push(template!("build.sh", "js/build.sh"));
            if kind == Kind::Provider {
                files.push(template!("platform.js", "js/provider/platform.js"));
            }
            files.extend(match kind {
                Kind::Provider => [
                    template!("src/plugin.js", "js/provider/src/plugin.js"),
                    template!("src/logic.js", "js/provider/src/logic.js"),
                    template!("test/logic.test.js", "js/provider/test/logic.test.js"),
                ],
                Kind::Strategy => [
                    template!("src/plugin.js", "js/strategy/src/plugin.js"),
                    template!("src/logic.js", "js/strategy/src/logic.js"),
                    template!("test/logic.test.js", "js/strategy/test/logic.test.js"),
                ],
                Kind::Health => [
                    template!("src/plugin.js", "js/health/src/plugin.js"),
                    template!("src/logic.js", "js/health/src/logic.js"),
                    template!("test/logic.test.js", "js/health/test/logic.test.js"),
                ],
            });
            files.extend(WIT);
        }
        Lang::Python => {
            files.push(template!("requirements.txt", "python/requirements.txt"));
            files.push(template!("build.sh", "python/build.sh"));
            files.extend(match kind {
                Kind::Provider => [
                    template!("app.py", "python/provider/app.py"),
                    template!("logic.py", "python/provider/logic.py"),
                    template!("test_logic.py", "python/provider/test_logic.py"),
                ],
                Kind::Strategy => [
                    template!("app.py", "python/strategy/app.py"),
                    template!("logic.py", "python/strategy/logic.py"),
                    template!("test_logic.py", "python/strategy/test_logic.py"),
                ],
                Kind::Health => [
                    template!("app.py", "python/health/app.py"),
                    template!("logic.py", "python/health/logic.py"),
                    template!("test_logic.py", "python/health/test_logic.py"),
                ],
            });
            files.extend(WIT);
        }
    }
    files
}

/// The values of a template's placeholders.
fn placeholders(args: &NewArgs, sdk: &str) -> Vec<(&'static str, String)> {
    let kind = args.kind.plugin_kind();
    let (language, lang, setup, test) = match args.lang {
        Lang::Rust => (
            "Rust",
            "rust",
            "rustup target add wasm32-wasip2",
            "cargo test",
        ),
        Lang::Js => ("JavaScript", "js", "npm install", "node --test"),
        Lang::Python => (
            "Python",
            "python",
            "pip install -r requirements.txt",
            "python3 -m unittest",
        ),
    };
    let strategy_js = args.lang == Lang::Js && args.kind == Kind::Strategy;
    let grant = match args.lang {
        Lang::Python => "allow_tcp = [\"localhost:*\"]",
        _ => "allow_http = [\"http://localhost:*\"]",
    };
    let demo = crate::build_info::DEMO_SERVICE;
    let demo = if Path::new(demo).exists() {
        demo.to_string()
    } else {
        "path/to/a/program/serving/http/on/PORT".to_string()
    };
    vec![
        ("{{name}}", args.name.clone()),
        ("{{crate}}", args.name.replace('-', "_")),
        ("{{kind}}", kind.as_str().to_string()),
        ("{{world}}", format!("{}-plugin", kind.as_str())),
        ("{{language}}", language.to_string()),
        ("{{lang}}", lang.to_string()),
        ("{{setup}}", setup.to_string()),
        ("{{test}}", test.to_string()),
        ("{{sdk}}", sdk.to_string()),
        ("{{demo}}", demo),
        ("{{grant}}", grant.to_string()),
        (
            "{{disable}}",
            if strategy_js { " -d http fetch-event" } else { "" }.to_string(),
        ),
        (
            "{{disable_why}}",
            if strategy_js {
                "\n# `-d http fetch-event`: a strategy gets no network, and the engine refuses one\n# that imports wasi:http."
            } else {
                ""
            }
            .to_string(),
        ),
    ]
}

fn fill(text: &str, values: &[(&'static str, String)]) -> String {
    values.iter().fold(text.to_string(), |text, (key, value)| {
        text.replace(key, value)
    })
}

pub fn run(args: &NewArgs) -> Result<(), CommandError> {
    check_name(&args.name)?;
    let files = files(args.lang, args.kind);
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists() && dir.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        return Err(CommandError::usage(format!(
            "{} exists and is not empty; choose another --dir",
            dir.display()
        )));
    }
    let sdk = sdk_dir(args)?;
    let values = placeholders(args, &sdk);
    for file in &files {
        write(&dir.join(file.path), &fill(file.text, &values))?;
    }
    make_executable(&dir.join("build.sh"))?;
    if args.kind == Kind::Provider {
        std::fs::create_dir_all(dir.join("platform")).map_err(|e| cannot(&dir, e))?;
    }
    println!(
        "created the {} plugin `{}` in {}\nnext:\n  cd {}\n  ./build.sh\n  engine plugins check {} --config pipeline.toml",
        args.kind.plugin_kind().as_str(),
        args.name,
        dir.display(),
        dir.display(),
        args.name
    );
    Ok(())
}

fn check_name(name: &str) -> Result<(), CommandError> {
    let fine = name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if fine {
        Ok(())
    } else {
        Err(CommandError::usage(format!(
            "`{name}` is not a plugin name: use lowercase letters, digits and dashes, starting with a letter (at most 40)"
        )))
    }
}

/// The SDK a Rust project depends on, as an absolute path.
fn sdk_dir(args: &NewArgs) -> Result<String, CommandError> {
    if args.lang != Lang::Rust {
        return Ok(String::new());
    }
    let given = args
        .sdk
        .clone()
        .unwrap_or_else(|| PathBuf::from(crate::build_info::SDK_DIR));
    let found = given
        .join("Cargo.toml")
        .exists()
        .then(|| given.canonicalize().ok())
        .flatten();
    found
        .map(|p| p.display().to_string())
        .ok_or_else(|| {
            CommandError::usage(format!(
                "the engine SDK is not at {}: pass --sdk with the sdk/ directory of the engine's source",
                given.display()
            ))
        })
}

fn cannot(path: &Path, e: std::io::Error) -> CommandError {
    CommandError::failure(format!("cannot write {}: {e}", path.display()))
}

fn write(path: &Path, text: &str) -> Result<(), CommandError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| cannot(parent, e))?;
    }
    std::fs::write(path, text).map_err(|e| cannot(path, e))
}

fn make_executable(path: &Path) -> Result<(), CommandError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| cannot(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("my-check2").is_ok());
        for bad in ["", "My", "2x", "a_b", "a-", "a/b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_placeholder_of_every_template_is_filled() {
        for lang in [Lang::Rust, Lang::Js, Lang::Python] {
            for kind in [Kind::Provider, Kind::Strategy, Kind::Health] {
                let args = NewArgs {
                    name: "x".into(),
                    kind,
                    lang,
                    dir: None,
                    sdk: None,
                };
                let values = placeholders(&args, "/sdk");
                for file in files(lang, kind) {
                    let text = fill(file.text, &values);
                    assert!(!text.contains("{{"), "{lang:?} {kind:?} {}", file.path);
                }
            }
        }
    }
}
