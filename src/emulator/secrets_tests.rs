//! Secrets at rest: the modes of the data folder and of every file holding a key, fresh,
//! reopened after an older run left them readable by others, and in the default temporary
//! folder (Unix only: Windows has no modes to check).

#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::secrets::mode_of;
use super::tests::support::start;
use super::*;

/// Writes something into the state (hub and DPS owner keys), so SQLite has a WAL and an SHM.
fn write_secrets(emulator: &Emulator, suffix: &str) {
    emulator
        .create_hub(&format!("hub-{suffix}"), "westeurope", None)
        .unwrap();
    emulator
        .cloud()
        .create_dps(&format!("dps-{suffix}"), "westeurope")
        .unwrap();
}

fn side_file(dir: &Path, suffix: &str) -> PathBuf {
    dir.join(format!("state.sqlite3{suffix}"))
}

/// Every secret in `dir` is owner-only while the emulator runs.
fn assert_owner_only(dir: &Path) {
    assert_eq!(mode_of(dir), 0o700, "{}", dir.display());
    for file in [
        dir.join("state.sqlite3"),
        side_file(dir, "-wal"),
        side_file(dir, "-shm"),
        dir.join(tls::CA_KEY_FILE),
    ] {
        assert_eq!(mode_of(&file), 0o600, "{}", file.display());
    }
}

#[test]
fn a_fresh_data_folder_is_owner_only() {
    let parent = tempfile::tempdir().unwrap();
    // A folder the emulator creates itself, one level below an existing one.
    let dir = parent.path().join("state");
    let emulator = start(Some(dir.clone()));
    write_secrets(&emulator, "a");
    assert_owner_only(&dir);
    // The certificate is public: clients read it to trust the emulator.
    assert!(dir.join(tls::CA_CERT_FILE).exists());
}

#[test]
fn a_reopened_data_folder_left_readable_is_tightened() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("state");
    // What a killed process leaves: the WAL and SHM of a running emulator, kept aside while it
    // runs and put back after it stopped (SQLite removes them on a clean close). SQLite keeps
    // the mode of such non-empty files (it fixes only empty ones), so they must be tightened.
    let leftovers: Vec<(PathBuf, Vec<u8>)> = {
        let emulator = start(Some(dir.clone()));
        write_secrets(&emulator, "a");
        ["-wal", "-shm"]
            .iter()
            .map(|suffix| {
                let path = side_file(&dir, suffix);
                let bytes = std::fs::read(&path).unwrap();
                assert!(!bytes.is_empty(), "{}", path.display());
                (path, bytes)
            })
            .collect()
    };
    let chmod = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    // What an older dpskit left: a 0755 folder, a 0644 database and CA key, and WAL/SHM files
    // at 0644 and 0755.
    chmod(&dir, 0o755);
    chmod(&dir.join("state.sqlite3"), 0o644);
    chmod(&dir.join(tls::CA_KEY_FILE), 0o644);
    for ((path, bytes), mode) in leftovers.iter().zip([0o644, 0o755]) {
        std::fs::write(path, bytes).unwrap();
        chmod(path, mode);
    }
    let trust_before = std::fs::read_to_string(dir.join(tls::CA_CERT_FILE)).unwrap();
    let emulator = start(Some(dir.clone()));
    assert_owner_only(&dir);
    // Tightened, not replaced: the state and the (constrained) CA are the ones written before.
    assert!(emulator.cloud().hub("hub-a").is_ok());
    assert_eq!(emulator.trust_pem(), trust_before);
    write_secrets(&emulator, "b");
    assert_owner_only(&dir);
}

#[test]
fn the_default_temporary_folder_is_owner_only() {
    let emulator = start(None);
    assert!(emulator.is_temporary());
    write_secrets(&emulator, "a");
    assert_owner_only(emulator.data_dir());
}

#[test]
fn a_secret_file_that_is_a_link_is_refused() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("state");
    std::fs::create_dir(&dir).unwrap();
    let elsewhere = parent.path().join("elsewhere.sqlite3");
    std::fs::write(&elsewhere, b"").unwrap();
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::symlink(&elsewhere, dir.join("state.sqlite3")).unwrap();
    let Err(error) = Emulator::start(EmulatorConfig {
        data_dir: Some(dir),
        port: 0,
        web_port: 0,
        amqp_port: 0,
        worker_threads: Some(1),
        ..EmulatorConfig::default()
    }) else {
        panic!("a linked database was opened");
    };
    assert!(error.to_string().contains("symbolic link"), "{error}");
    // The file the link points to was not changed through it.
    assert_eq!(mode_of(&elsewhere), 0o644);
}
