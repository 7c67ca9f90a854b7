//! engine.lock: `engine plugins lock` records each plugin's code and capabilities, the lock
//! pins plugin files, and `--locked` refuses a plugin that changed until the change is
//! accepted with `engine plugins lock --update`.

mod support;

use support::project::{CHECKED_SERVICE as SERVICES, Project, assert_exit};
use support::text;

/// A project whose plugin files are pinned by nothing but the lock to come.
fn unpinned_project() -> Project {
    let project = Project::new(SERVICES);
    let path = project.path("pipeline.toml");
    let pinned = std::fs::read_to_string(&path).unwrap();
    let unpinned: String = pinned
        .lines()
        .filter(|l| !l.starts_with("sha256 ="))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&path, unpinned).unwrap();
    std::fs::create_dir_all(project.path("data")).unwrap();
    project
}

/// Puts another component in the test provider's place, as a rebuild or upgrade would.
fn replace_provider_with(project: &Project, package: &str) {
    let bytes = std::fs::read(support::testing_plugin(package)).unwrap();
    std::fs::write(project.path("plugins/testing_test_provider.wasm"), bytes).unwrap();
}

#[test]
fn a_plugin_file_without_sha256_needs_the_lock_and_the_lock_pins_it() {
    let project = unpinned_project();
    let out = project.engine(&["validate"]);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("nothing pins its code")
            && text(&out).contains("run `engine plugins lock`"),
        "{}",
        text(&out)
    );

    let out = project.engine(&["plugins", "lock"]);
    assert_exit(&out, 0);
    let shown = text(&out);
    assert!(shown.contains("+ test: provider"), "{shown}");
    assert!(
        shown.contains("may use dir /platform (writable)"),
        "{shown}"
    );
    assert!(shown.contains("+ all-at-once: strategy"), "{shown}");
    let lock = std::fs::read_to_string(project.path("engine.lock")).unwrap();
    assert!(
        lock.contains("source = \"plugins/testing_test_provider.wasm\""),
        "{lock}"
    );

    assert_exit(&project.engine(&["validate", "--locked"]), 0);
    assert_exit(&project.run(&["--locked"]), 0);
    let again = project.engine(&["plugins", "lock"]);
    assert_exit(&again, 0);
    assert!(
        text(&again).contains("engine.lock is up to date"),
        "{}",
        text(&again)
    );

    // A rebuilt file no longer matches the lock's pin, with or without --locked.
    replace_provider_with(&project, "testing-hostile");
    let out = project.engine(&["validate"]);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("does not match its pinned sha256")
            && text(&out).contains("engine plugins lock --update"),
        "{}",
        text(&out)
    );
}

#[test]
fn an_upgrade_that_asks_for_more_is_refused_until_accepted() {
    let project = unpinned_project();
    // The test provider declares no /data; the pipeline grants it anyway (the upgrade will ask).
    project.edit(
        "dirs = [{ host = \"platform\", guest = \"/platform\", writable = true }]",
        "dirs = [{ host = \"platform\", guest = \"/platform\", writable = true }, { host = \"data\", guest = \"/data\", writable = true }]",
    );
    assert_exit(&project.engine(&["plugins", "lock"]), 0);
    let before = std::fs::read_to_string(project.path("engine.lock")).unwrap();

    replace_provider_with(&project, "testing-hostile");
    let out = project.engine(&["plugins", "lock"]);
    assert_exit(&out, 1);
    let shown = text(&out);
    for expected in [
        "~ test:",
        "code (sha256): locked",
        "+ env HOSTILE_GRANTED",
        "+ dir /data (writable)",
        "nothing was written",
        "engine plugins lock --update",
    ] {
        assert!(shown.contains(expected), "{expected}: {shown}");
    }
    assert_eq!(
        std::fs::read_to_string(project.path("engine.lock")).unwrap(),
        before,
        "a refused lock leaves the file as it was"
    );
    let out = project.run(&["--locked"]);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("does not match its pinned sha256"),
        "{}",
        text(&out)
    );

    let out = project.engine(&["plugins", "lock", "--update"]);
    assert_exit(&out, 0);
    assert!(
        text(&out).contains("now is granted what the lock does not record"),
        "{}",
        text(&out)
    );
    assert_exit(&project.engine(&["validate", "--locked"]), 0);
}

#[test]
fn locked_refuses_a_widened_grant_and_a_plugin_the_lock_does_not_record() {
    let project = unpinned_project();
    let out = project.engine(&["validate", "--locked"]);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("no engine.lock beside the pipeline"),
        "{}",
        text(&out)
    );

    assert_exit(&project.engine(&["plugins", "lock"]), 0);
    // The pipeline now lets the check reach a new destination: a grant the lock never saw.
    project.edit(
        "[plugins.health]\n",
        "[plugins.health]\nallow_http = [\"https://example.com\"]\n",
    );
    let out = project.engine(&["validate", "--locked"]);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("plugin `health` differs from engine.lock")
            && text(&out).contains("+ http https://example.com"),
        "{}",
        text(&out)
    );
    // Without --locked it is a warning: the lock is out of date.
    let out = project.engine(&["validate"]);
    assert_exit(&out, 0);
    assert!(text(&out).contains("warning"), "{}", text(&out));

    project.edit(
        "[defaults]\n",
        "[plugins.slow]\nsource = \"canary\"\n\n[defaults]\n",
    );
    project.edit(
        "image = \"api:1\"",
        "image = \"api:1\"\nstrategy = \"slow\"",
    );
    let out = project.engine(&["validate", "--locked"]);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("plugin `slow` is not recorded in engine.lock"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_directory_a_plugin_needs_must_be_granted_as_it_asks() {
    let project = Project::new(SERVICES);
    project.edit(
        "dirs = [{ host = \"platform\", guest = \"/platform\", writable = true }]",
        "dirs = [{ host = \"platform\", guest = \"/platform\" }]",
    );
    let out = project.engine(&["validate"]);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("grants it read-only; add `writable = true`"),
        "{}",
        text(&out)
    );
    project.edit(
        "dirs = [{ host = \"platform\", guest = \"/platform\" }]\n",
        "",
    );
    let out = project.engine(&["validate"]);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("needs directory /platform") && text(&out).contains("grants none"),
        "{}",
        text(&out)
    );
}

#[test]
fn each_environment_has_its_own_section() {
    let project = unpinned_project();
    project.edit(
        "[defaults]\n",
        "[environments.production.plugins.health]\nallow_http = [\"https://example.com\"]\n\n[defaults]\n",
    );
    assert_exit(&project.engine(&["plugins", "lock"]), 0);
    let out = project.engine(&["validate", "--locked", "--env", "production"]);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("for environment `production`"),
        "{}",
        text(&out)
    );
    assert_exit(
        &project.engine(&["plugins", "lock", "--env", "production"]),
        0,
    );
    assert_exit(
        &project.engine(&["validate", "--locked", "--env", "production"]),
        0,
    );
    assert_exit(&project.engine(&["validate", "--locked"]), 0);
    let lock = std::fs::read_to_string(project.path("engine.lock")).unwrap();
    assert!(
        lock.contains("[environments.production.plugins.health]"),
        "{lock}"
    );
}
