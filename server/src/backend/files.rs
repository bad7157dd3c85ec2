//! The embedded board store: one file per persistent room in the data directory.
//!
//! A save writes a temporary file beside the target (uniquely named by `tempfile`, and removed
//! if the write fails), flushes it to disk, renames it over the target and flushes the
//! directory, so a crash leaves either the old copy or the new one, and two saves of one room
//! at once never write into the same temporary file.
//! The file is `BRB1`, the settings' length (u32, big-endian), the settings (JSON), then the
//! board (a Yjs v1 update).
//!
//! A deleted room leaves `<room>.deleted`, an empty file: its tombstone, the id only. A save
//! of a room with a tombstone does nothing.
//!
//! A crash in the middle of a save leaves its temporary file behind, holding a copy of the
//! board, perhaps of a room deleted since: the node removes such files when it starts
//! ([`FileStore::remove_leftovers`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};

use super::{BackendError, BackendResult, BoardStore, StoredBoard};

const MAGIC: &[u8; 4] = b"BRB1";

/// Boards as files under `<data dir>/rooms/`.
pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    /// A store under `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        FileStore { dir: data_dir.join("rooms") }
    }

    /// Removes the temporary files (`*.tmp`) of saves that a crash interrupted: those last
    /// written more than `older_than` ago, so that a save of another process still writing
    /// into the directory is left alone. Returns how many went. A directory that does not
    /// exist yet holds none.
    pub fn remove_leftovers(&self, older_than: std::time::Duration) -> std::io::Result<usize> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut removed = 0;
        for entry in entries {
            let entry = entry?;
            if !entry.file_name().to_string_lossy().ends_with(".tmp") {
                continue;
            }
            let metadata = entry.metadata()?;
            let age = metadata.modified()?.elapsed().unwrap_or_default();
            if metadata.is_file() && age > older_than {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn path(&self, room: &str) -> PathBuf {
        // Room ids are checked to be alphanumeric before they reach a store.
        self.dir.join(format!("{room}.board"))
    }

    fn tombstone(&self, room: &str) -> PathBuf {
        self.dir.join(format!("{room}.deleted"))
    }
}

fn encode(stored: &StoredBoard) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + stored.settings.len() + stored.board.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(stored.settings.len() as u32).to_be_bytes());
    out.extend_from_slice(&stored.settings);
    out.extend_from_slice(&stored.board);
    out
}

fn decode(bytes: Vec<u8>) -> BackendResult<StoredBoard> {
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(BackendError::Corrupt);
    }
    let len = u32::from_be_bytes(bytes[4..8].try_into().expect("four bytes")) as usize;
    if bytes.len() < 8 + len {
        return Err(BackendError::Corrupt);
    }
    let bytes = Bytes::from(bytes);
    Ok(StoredBoard { settings: bytes.slice(8..8 + len), board: bytes.slice(8 + len..) })
}

fn write_atomically(dir: &Path, target: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    // In the same directory, so the rename stays on one file system: `<target>.<random>.tmp`.
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut builder = tempfile::Builder::new();
    builder.prefix(&name).suffix(".tmp");
    // The mode `File::create` gives (before the umask), not tempfile's owner-only default, so
    // operators see the files as before.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut temporary = builder.tempfile_in(dir)?;
    temporary.write_all(bytes)?;
    temporary.as_file().sync_all()?;
    temporary.persist(target).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

impl BoardStore for FileStore {
    fn save(&self, room: &str, stored: StoredBoard) -> BoxFuture<'_, BackendResult<()>> {
        let (dir, target, tombstone) = (self.dir.clone(), self.path(room), self.tombstone(room));
        async move {
            if tokio::fs::try_exists(&tombstone).await? {
                return Ok(());
            }
            let bytes = encode(&stored);
            tokio::task::spawn_blocking(move || write_atomically(&dir, &target, &bytes))
                .await
                .map_err(|e| BackendError::Io(std::io::Error::other(e)))??;
            Ok(())
        }
        .boxed()
    }

    fn load(&self, room: &str) -> BoxFuture<'_, BackendResult<Option<StoredBoard>>> {
        let target = self.path(room);
        async move {
            match tokio::fs::read(&target).await {
                Ok(bytes) => decode(bytes).map(Some),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            }
        }
        .boxed()
    }

    fn delete(&self, room: &str) -> BoxFuture<'_, BackendResult<()>> {
        let (dir, target, tombstone) = (self.dir.clone(), self.path(room), self.tombstone(room));
        async move {
            // The tombstone first: a crash in between leaves a deleted room with a stale file,
            // never a forgotten deletion.
            tokio::task::spawn_blocking(move || write_atomically(&dir, &tombstone, b""))
                .await
                .map_err(|e| BackendError::Io(std::io::Error::other(e)))??;
            match tokio::fs::remove_file(&target).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        .boxed()
    }

    fn is_deleted(&self, room: &str) -> BoxFuture<'_, BackendResult<bool>> {
        let tombstone = self.tombstone(room);
        async move { Ok(tokio::fs::try_exists(&tombstone).await?) }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_temporary_files_of_interrupted_saves_are_removed_and_nothing_else() {
        let data = tempfile::tempdir().unwrap();
        let store = FileStore::new(data.path());
        assert_eq!(store.remove_leftovers(std::time::Duration::from_secs(60)).unwrap(), 0, "no directory yet");
        std::fs::create_dir_all(&store.dir).unwrap();
        let file = |name: &str, age_secs: u64| {
            let path = store.dir.join(name);
            std::fs::write(&path, b"BRB1 a board").unwrap();
            let modified = std::time::SystemTime::now() - std::time::Duration::from_secs(age_secs);
            std::fs::File::options().write(true).open(&path).unwrap().set_modified(modified).unwrap();
        };
        file("room1.board", 3600);
        file("room2.deleted", 3600);
        file("room1.board.a1B2c3.tmp", 3600);
        file("room3.board.d4E5f6.tmp", 3600);
        file("room2.board.g7H8i9.tmp", 1);
        assert_eq!(store.remove_leftovers(std::time::Duration::from_secs(60)).unwrap(), 2);
        let mut names: Vec<_> =
            std::fs::read_dir(&store.dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["room1.board", "room2.board.g7H8i9.tmp", "room2.deleted"], "a save in progress stays");
    }

    #[tokio::test]
    async fn a_save_leaves_the_board_alone_in_the_directory_with_the_usual_mode() {
        let data = tempfile::tempdir().unwrap();
        let store = FileStore::new(data.path());
        for board in [&b"first"[..], b"second"] {
            let stored = StoredBoard { settings: Bytes::from_static(b"{}"), board: Bytes::copy_from_slice(board) };
            store.save("room1", stored).await.unwrap();
        }
        assert_eq!(&store.load("room1").await.unwrap().unwrap().board[..], b"second");
        let names: Vec<_> =
            std::fs::read_dir(&store.dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names, ["room1.board"], "no temporary file is left behind");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            let reference = data.path().join("reference");
            std::fs::File::create(&reference).unwrap();
            assert_eq!(mode(&store.path("room1")), mode(&reference), "the mode File::create gives");
        }
    }
}
