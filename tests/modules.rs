//! Shared script modules: `lib/<name>.rhai`, callable by name from every
//! events file (no `import`: it is disabled), never another project's,
//! reloaded with the project; `switchboard check`
//! catches calls to functions no file defines (issue 16, item 1).

mod common;

use std::time::{Duration, Instant};

use common::{HOME_PAGE, Server, run_check, temp_dir, toast_of, write_project};

const LIGHTS: &str = r#"// Shared by every events file.
fn prefix() { "Light" }

fn label(n) { `${prefix()} ${n}: ${state_word(true)}` }

private fn hidden() { 1 }

fn state_word(on) { if on { "on" } else { "off" } }
"#;

#[tokio::test]
async fn events_files_share_lib_modules() {
    let root = temp_dir("modules");
    let dir = write_project(
        &root,
        "site",
        &[
            ("project.toml", ""),
            ("pages/home.html", HOME_PAGE),
            ("lib/lights.rhai", LIGHTS),
            (
                "events/10-a.rhai",
                "fn userCommand(s, u, name, p) {\n  if name == \"a\" { return #{ toast: lights::label(p) }; }\n}\n",
            ),
            (
                "events/20-b.rhai",
                "fn userCommand(s, u, name, p) {\n  if name == \"b\" { return #{ toast: lights::label(p) + \"/\" + lights::state_word(false) }; }\n}\n",
            ),
        ],
    );
    let (code, stdout, stderr) = run_check(&dir);
    assert_eq!((code, stdout.trim()), (Some(0), "ok"), "{stderr}");

    let server = Server::start(&root);
    let client = server.client("site").await;
    assert_eq!(toast_of(&client.command("a", "1").await), "Light 1: on");
    assert_eq!(toast_of(&client.command("b", "2").await), "Light 2: on/off");

    // Reloaded with the project: the next command sees the new module.
    std::fs::write(dir.join("lib/lights.rhai"), LIGHTS.replace("Light", "Lamp")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = toast_of(&client.command("a", "3").await).to_string();
        if text == "Lamp 3: on" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the module was not reloaded: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn check_catches_calls_nothing_defines() {
    let root = temp_dir("modules-check");
    let dir = write_project(
        &root,
        "site",
        &[
            ("project.toml", ""),
            ("pages/home.html", HOME_PAGE),
            ("lib/lights.rhai", LIGHTS),
            (
                "events/10-lights.rhai",
                "fn helper(x) { x }\nfn userCommand(s, u, n, p) { helper(p) }\n",
            ),
            // `helper` lives in another file: seen only there.
            (
                "events/20-climate.rhai",
                "fn userCommand(s, u, n, p) {\n  uiSet(\"t\", \"value\", p);\n  helper(p)\n}\n",
            ),
            (
                "events/30-modules.rhai",
                "fn userCommand(s, u, n, p) {\n  lights::hidden();\n  lights::nope(1);\n}\n",
            ),
            (
                "events/40-nomodule.rhai",
                "fn userCommand(s, u, n, p) {\n  nomodule::f()\n}\n",
            ),
        ],
    );
    let (code, _, stderr) = run_check(&dir);
    assert_eq!(code, Some(1), "{stderr}");
    let expect = [
        "events/20-climate.rhai:3:3: no function `helper` with 1 argument(s)",
        "events/30-modules.rhai:2:11: lib/lights.rhai has no public function `hidden`",
        "events/30-modules.rhai:3:11: lib/lights.rhai has no public function `nope`",
        "events/40-nomodule.rhai:2:3: Undefined module: nomodule",
    ];
    for line in expect {
        assert!(stderr.contains(line), "missing {line:?} in:\n{stderr}");
    }
    assert!(
        !stderr.contains("uiSet"),
        "host functions are known: {stderr}"
    );
    assert!(!stderr.contains("10-lights"), "{stderr}");
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn modules_stay_inside_the_project_and_their_errors_are_placed() {
    let root = temp_dir("modules-sandbox");
    write_project(
        &root,
        "other",
        &[
            ("project.toml", ""),
            ("lib/secret.rhai", "fn key() { 42 }\n"),
        ],
    );
    let dir = write_project(
        &root,
        "site",
        &[
            ("project.toml", ""),
            ("pages/home.html", HOME_PAGE),
            (
                "lib/broken.rhai",
                "fn ok() { 1 }\nfn bad() {\n  let = 2;\n}\n",
            ),
            // Another project's module is not this project's.
            (
                "events/10-a.rhai",
                "fn userCommand(s, u, n, p) {\n  secret::key()\n}\n",
            ),
            // No `import` at all, of a path or of a name.
            (
                "events/20-b.rhai",
                "fn userCommand(s, u, n, p) {\n  import \"../other/lib/secret\" as s1;\n}\n",
            ),
        ],
    );
    let (code, _, stderr) = run_check(&dir);
    assert_eq!(code, Some(1), "{stderr}");
    for wanted in [
        "lib/broken.rhai:3:7:",
        "events/10-a.rhai:2:3: Undefined module: secret",
        "events/20-b.rhai:2:3:",
    ] {
        assert!(stderr.contains(wanted), "missing {wanted:?} in:\n{stderr}");
    }
    assert!(stderr.contains("import"), "{stderr}");
    std::fs::remove_dir_all(&root).ok();
}
