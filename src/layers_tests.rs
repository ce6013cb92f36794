//! The layers point down only, checked from the source: the device side (`hub`,
//! `provisioning`, `service`, `fleet`) never names the emulator, the emulator never names the
//! device side, and the shared layer under both (`protocol`, `transport`, `limits`, `pki`,
//! `sas`, `clock`, `random`, `error`) names neither, in test code too: only `src/interop_tests/`
//! runs dpskit's clients against the emulator.
//! Other layers are named through `crate::` only (a `super::` path stays inside its layer),
//! which is what the scan reads.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Top-level modules of the device side.
const DEVICE_SIDE: &[&str] = &["hub", "provisioning", "service", "fleet", "doctor"];
/// Top-level modules of the shared layer.
const SHARED: &[&str] = &[
    "protocol",
    "transport",
    "limits",
    "pki",
    "diagnosis",
    "sas",
    "clock",
    "random",
    "error",
];

/// The top-level modules `source` names through `crate::` (`crate::x::..` and every name
/// of a `crate::{x, y::z}` group), outside comments.
fn crate_modules(source: &str) -> BTreeSet<String> {
    let code: String = source
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |text: &str| -> String {
        text.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => {
                // Top-level names of the group: after `{` and after each `,` at depth 0.
                let mut depth = 0usize;
                let mut expecting = true;
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => expecting = true,
                        c if c.is_whitespace() => {}
                        _ if expecting && depth == 0 => {
                            found.insert(ident(&group[i..]));
                            expecting = false;
                        }
                        _ => {}
                    }
                }
            }
            None => {
                found.insert(ident(rest));
            }
        }
    }
    found.retain(|m| !m.is_empty());
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`src/hub/mod.rs` → `hub`).
fn layer_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next().unwrap().as_os_str();
    first.to_string_lossy().trim_end_matches(".rs").to_string()
}

fn forbidden_for(layer: &str) -> Vec<&'static str> {
    if DEVICE_SIDE.contains(&layer) {
        vec!["emulator"]
    } else if layer == "emulator" {
        DEVICE_SIDE.to_vec()
    } else if SHARED.contains(&layer) {
        let mut all = DEVICE_SIDE.to_vec();
        all.push("emulator");
        all
    } else {
        Vec::new()
    }
}

#[test]
fn layers_point_down_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    let mut checked = BTreeSet::new();
    for file in &files {
        let layer = layer_of(&src, file);
        let forbidden = forbidden_for(&layer);
        if forbidden.is_empty() {
            continue;
        }
        checked.insert(layer.clone());
        let source = std::fs::read_to_string(file).unwrap();
        // Test code is held to the same rule: only `interop_tests` uses both sides.
        for module in crate_modules(&source) {
            if forbidden.contains(&module.as_str()) {
                violations.push(format!(
                    "{} ({layer}) uses crate::{module}",
                    file.strip_prefix(&src).unwrap().display()
                ));
            }
        }
    }
    // Every layer was found and read: the check cannot pass by scanning nothing.
    for layer in DEVICE_SIDE.iter().chain(SHARED).chain(&["emulator"]) {
        assert!(
            checked.contains(*layer),
            "no source file of {layer} was checked"
        );
    }
    assert!(
        violations.is_empty(),
        "layers must point down only:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_scanner_sees_every_way_to_name_a_module() {
    let names = |s: &str| crate_modules(s).into_iter().collect::<Vec<_>>();
    assert_eq!(names("use crate::emulator::topics::route;"), ["emulator"]);
    assert_eq!(
        names("use crate::{\n    error::Result,\n    hub::{a, b},\n    emulator,\n};"),
        ["emulator", "error", "hub"]
    );
    assert_eq!(
        names("let x = crate::provisioning::Trust::system();"),
        ["provisioning"]
    );
    assert!(names("// crate::emulator in a comment\n/// [`crate::hub`]").is_empty());
    // A test module is read like the rest of its file.
    let source = "use crate::protocol;\n#[cfg(test)]\nmod tests {\n    use crate::emulator;\n}\n";
    assert_eq!(names(source), ["emulator", "protocol"]);
}
