//! Owner-only secrets on disk. The data folder holds the owner keys of every hub and DPS, device
//! keys (in `state.sqlite3` and its WAL/SHM files) and the emulator CA's private key, so on Unix
//! the folder is 0700 and each of those files 0600. Files are created with that mode (never
//! created looser and tightened afterwards), and what an older data folder left looser is
//! tightened before anything reads it, with a warning naming the path and the old mode.
//!
//! The process umask is left alone: it is process-wide, and a Python host may depend on it.
//! SQLite creates its WAL and SHM files with the mode of the database file, and keeps the mode
//! of existing non-empty ones (a killed process leaves them), so a 0600 database, created here
//! before SQLite opens it, and leftovers tightened before it opens them are enough. On Windows
//! nothing here changes permissions: the folder inherits the ACL of its parent (the user's
//! profile for the temporary folder).

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The files SQLite keeps next to a database.
pub(crate) const SQLITE_SIDE_FILES: [&str; 3] = ["-wal", "-shm", "-journal"];

/// Creates `dir` (and missing parents) if needed, owner-only, and tightens it to 0700 when it
/// exists with more.
pub(crate) fn private_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        // Parents made here get the same mode: nothing the emulator creates is more open.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(dir, e))?;
        tighten(dir, 0o700, true)
    }
    #[cfg(not(unix))]
    {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
    }
}

/// Tightens `path` to 0600 if it exists with more (a missing file is fine).
pub(crate) fn private_file_if_present(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        tighten(path, 0o600, false)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

/// Makes sure `path` exists with mode 0600: created so when missing (with no content), tightened
/// when looser.
pub(crate) fn private_file(path: &Path) -> Result<()> {
    let mut options = fs::OpenOptions::new();
    // Append never truncates what an existing database holds.
    options.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map_err(|e| Error::io(path, e))?;
    private_file_if_present(path)
}

/// Replaces `path` with `data`, owner-only: written to a new 0600 file that is renamed over the
/// old one, so a reader that opened the old (looser) file never sees the new secret.
pub(crate) fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut temporary = PathBuf::from(path);
    temporary.as_mut_os_string().push(".new");
    // A leftover from a crash may be looser: start afresh.
    match fs::remove_file(&temporary) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(&temporary, e)),
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&temporary)
        .map_err(|e| Error::io(&temporary, e))?;
    file.write_all(data)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(&temporary, e))?;
    drop(file);
    fs::rename(&temporary, path).map_err(|e| Error::io(path, e))
}

/// Sets `path` to `wanted` when it grants anything more (group or other bits, or more owner
/// bits), saying so; a missing path is left alone. A folder given as a link is the user's
/// choice and is followed; a secret file that is a link is refused.
#[cfg(unix)]
fn tighten(path: &Path, wanted: u32, follow: bool) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = match if follow {
        fs::metadata(path)
    } else {
        fs::symlink_metadata(path)
    } {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    if metadata.file_type().is_symlink() {
        // chmod would follow the link to a file the emulator does not own.
        return Err(Error::emulator(format!(
            "{} is a symbolic link: the emulator keeps secrets only in plain files",
            path.display()
        )));
    }
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & !wanted != 0 {
        log::warn!(
            "emulator: {} was mode {mode:04o}, readable by others; tightened to {wanted:04o}",
            path.display()
        );
        fs::set_permissions(path, fs::Permissions::from_mode(wanted))
            .map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

/// The mode bits of `path` (tests).
#[cfg(all(test, unix))]
pub(crate) fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}
