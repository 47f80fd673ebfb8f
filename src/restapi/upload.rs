//! Local files and folders as the multipart upload that `add` reads (kubo's
//! layout, which upstream's `/add` shares): one part per file, streamed from
//! disk, named by its path inside the upload; a folder is an empty part of type
//! `application/x-directory` before its contents.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::TryStreamExt;

use reqwest::multipart::{Form, Part};

/// Why an upload could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// A path cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A folder was given without `recursive`.
    #[error("{0} is a directory: add it with -r")]
    Directory(PathBuf),
    /// A path has no usable file name.
    #[error("{0}: no file name")]
    NoName(PathBuf),
}

/// What goes into the upload.
#[derive(Debug, Clone, Default)]
pub struct UploadOptions {
    /// Folders are added with their contents.
    pub recursive: bool,
    /// Names starting with a dot are included.
    pub hidden: bool,
    /// Counts the file bytes to send and those sent, for a progress display.
    pub progress: Option<Arc<UploadProgress>>,
}

/// File bytes in an upload and how many have gone out so far.
#[derive(Debug, Default)]
pub struct UploadProgress {
    /// The files' total size.
    pub total: AtomicU64,
    /// Bytes handed to the connection.
    pub sent: AtomicU64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> UploadError + '_ {
    move |source| UploadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The upload of `paths`, each under its own file name.
pub async fn form(paths: &[PathBuf], opts: &UploadOptions) -> Result<Form, UploadError> {
    let mut form = Form::new();
    for path in paths {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .ok_or_else(|| UploadError::NoName(path.clone()))?;
        form = add_path(form, path, name, opts).await?;
    }
    Ok(form)
}

/// Adds `path` as `name`, and a folder's entries under it, in name order.
async fn add_path(
    mut form: Form,
    path: &Path,
    name: String,
    opts: &UploadOptions,
) -> Result<Form, UploadError> {
    // Iterative, so that deep trees need no recursion of futures.
    let mut todo = vec![(path.to_path_buf(), name)];
    while let Some((path, name)) = todo.pop() {
        // Links go as links (as kubo's client sends them): following them could
        // loop forever or leave the tree.
        let meta = tokio::fs::symlink_metadata(&path)
            .await
            .map_err(io_err(&path))?;
        if meta.file_type().is_symlink() {
            let target = tokio::fs::read_link(&path).await.map_err(io_err(&path))?;
            form = form.part(
                "file",
                typed_part(
                    target.to_string_lossy().as_bytes().to_vec(),
                    name,
                    "application/symlink",
                    &path,
                )?,
            );
            continue;
        }
        if !meta.is_dir() {
            let file = tokio::fs::File::open(&path).await.map_err(io_err(&path))?;
            let chunks = tokio_util::io::ReaderStream::new(file);
            let body = match &opts.progress {
                Some(p) => {
                    p.total.fetch_add(meta.len(), Ordering::Relaxed);
                    let p = p.clone();
                    reqwest::Body::wrap_stream(chunks.inspect_ok(move |b| {
                        p.sent.fetch_add(b.len() as u64, Ordering::Relaxed);
                    }))
                }
                None => reqwest::Body::wrap_stream(chunks),
            };
            let part = Part::stream_with_length(body, meta.len())
                .file_name(name)
                .mime_str("application/octet-stream")
                .map_err(|e| UploadError::Io {
                    path: path.clone(),
                    source: std::io::Error::other(e),
                })?;
            form = form.part("file", part);
            continue;
        }
        if !opts.recursive {
            return Err(UploadError::Directory(path));
        }
        form = form.part(
            "file",
            typed_part(Vec::new(), name.clone(), "application/x-directory", &path)?,
        );
        let mut entries = Vec::new();
        let mut dir = tokio::fs::read_dir(&path).await.map_err(io_err(&path))?;
        while let Some(e) = dir.next_entry().await.map_err(io_err(&path))? {
            let child = e.file_name().to_string_lossy().to_string();
            if opts.hidden || !child.starts_with('.') {
                entries.push(child);
            }
        }
        entries.sort();
        // Popped last-first: push in reverse so that entries go out in order.
        for child in entries.into_iter().rev() {
            todo.push((path.join(&child), format!("{name}/{child}")));
        }
    }
    Ok(form)
}

/// A small in-memory part of type `mime`.
fn typed_part(body: Vec<u8>, name: String, mime: &str, path: &Path) -> Result<Part, UploadError> {
    Part::bytes(body)
        .file_name(name)
        .mime_str(mime)
        .map_err(|e| UploadError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })
}
