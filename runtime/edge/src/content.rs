//! Where static content comes from. [`ContentSource`] is the abstraction the
//! static route serves from; [`DirectorySource`] implements it over a local
//! directory (local mode), and a content-addressed bundle store implements
//! it for signed bundles.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io::{self, Read, Seek};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncSeekExt, ReadBuf};

use crate::body::BoxError;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A read-only tree of files addressed by relative paths.
pub trait ContentSource: Send + Sync + fmt::Debug {
    /// `path` is relative, `/`-separated, already validated: no empty,
    /// `.` or `..` segments, no backslashes or NUL.
    fn open<'a>(&'a self, path: &'a str) -> BoxFuture<'a, io::Result<Lookup>>;
}

#[derive(Debug)]
pub enum Lookup {
    File(ContentObject),
    /// The path names a directory (the caller may redirect to `path/`).
    Directory,
    NotFound,
}

/// One file's metadata and a way to read it.
#[derive(Debug)]
pub struct ContentObject {
    pub len: u64,
    pub modified: Option<SystemTime>,
    /// blake3 of the whole content: the basis of the strong ETag.
    pub hash: blake3::Hash,
    /// The media type, when the source knows it (a bundle's manifest says);
    /// otherwise it is guessed from the path.
    pub content_type: Option<String>,
    pub data: ContentData,
}

#[derive(Debug)]
pub enum ContentData {
    Bytes(Bytes),
    File(tokio::fs::File),
}

impl ContentObject {
    /// Strong entity tag derived from the content hash.
    pub fn etag(&self) -> String {
        format!("\"b3-{}\"", &self.hash.to_hex()[..32])
    }

    /// A body for bytes `start..=end` (inclusive).
    pub async fn body(self, start: u64, end: u64) -> io::Result<crate::Body> {
        use http_body_util::BodyExt;
        let len = end.saturating_add(1).saturating_sub(start);
        match self.data {
            ContentData::Bytes(b) => {
                let s = usize::try_from(start).unwrap_or(usize::MAX).min(b.len());
                let e = usize::try_from(end.saturating_add(1))
                    .unwrap_or(usize::MAX)
                    .min(b.len());
                Ok(crate::body::full(b.slice(s..e)))
            }
            ContentData::File(mut f) => {
                f.seek(io::SeekFrom::Start(start)).await?;
                Ok(FileBody {
                    file: f,
                    remaining: len,
                }
                .map_err(BoxError::from)
                .boxed_unsync())
            }
        }
    }
}

/// Files at or below this size are read whole when opened.
pub(crate) const INLINE_LIMIT: u64 = 256 * 1024;
/// Hashes remembered per directory source.
const HASH_CACHE_ENTRIES: usize = 16_384;

/// Serves files from a directory. Symlinks are followed only while they
/// stay inside the root.
pub struct DirectorySource {
    inner: Arc<DirectoryInner>,
}

/// A file's length and mtime when it was hashed, and the hash.
type HashedAs = (u64, Option<SystemTime>, blake3::Hash);

struct DirectoryInner {
    root: PathBuf,
    hashes: Mutex<HashMap<PathBuf, HashedAs>>,
}

impl fmt::Debug for DirectorySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectorySource")
            .field("root", &self.inner.root)
            .finish_non_exhaustive()
    }
}

impl DirectorySource {
    /// `root` must exist; it is canonicalized once here.
    pub fn new(root: &Path) -> io::Result<Self> {
        let root = root.canonicalize()?;
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory",
            ));
        }
        Ok(Self {
            inner: Arc::new(DirectoryInner {
                root,
                hashes: Mutex::new(HashMap::new()),
            }),
        })
    }
}

impl DirectoryInner {
    fn open_blocking(&self, rel: &str) -> io::Result<Lookup> {
        let joined = self.root.join(rel);
        let path = match joined.canonicalize() {
            Ok(p) => p,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(Lookup::NotFound);
            }
            Err(e) => return Err(e),
        };
        if !path.starts_with(&self.root) {
            return Ok(Lookup::NotFound);
        }
        let mut file = std::fs::File::open(&path)?;
        let meta = file.metadata()?;
        if meta.is_dir() {
            return Ok(Lookup::Directory);
        }
        if !meta.is_file() {
            return Ok(Lookup::NotFound);
        }
        let len = meta.len();
        let modified = meta.modified().ok();
        if len <= INLINE_LIMIT {
            let mut buf = Vec::with_capacity(len as usize);
            file.read_to_end(&mut buf)?;
            let hash = blake3::hash(&buf);
            return Ok(Lookup::File(ContentObject {
                len: buf.len() as u64,
                modified,
                hash,
                content_type: None,
                data: ContentData::Bytes(Bytes::from(buf)),
            }));
        }
        let hash = self.hash_of(&path, len, modified, &mut file)?;
        file.rewind()?;
        Ok(Lookup::File(ContentObject {
            len,
            modified,
            hash,
            content_type: None,
            data: ContentData::File(tokio::fs::File::from_std(file)),
        }))
    }

    fn hash_of(
        &self,
        path: &Path,
        len: u64,
        modified: Option<SystemTime>,
        file: &mut std::fs::File,
    ) -> io::Result<blake3::Hash> {
        if let Ok(cache) = self.hashes.lock()
            && let Some((l, m, h)) = cache.get(path)
            && *l == len
            && *m == modified
        {
            return Ok(*h);
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(&mut *file)?;
        let hash = hasher.finalize();
        if let Ok(mut cache) = self.hashes.lock() {
            if cache.len() >= HASH_CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(path.to_owned(), (len, modified, hash));
        }
        Ok(hash)
    }
}

impl ContentSource for DirectorySource {
    fn open<'a>(&'a self, path: &'a str) -> BoxFuture<'a, io::Result<Lookup>> {
        Box::pin(async move {
            // File system calls block: keep them off the async workers.
            let inner = self.inner.clone();
            let path = path.to_owned();
            tokio::task::spawn_blocking(move || inner.open_blocking(&path))
                .await
                .map_err(io::Error::other)?
        })
    }
}

/// Streams a file in 64 KiB chunks.
struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
}

impl HttpBody for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = self.remaining.min(64 * 1024) as usize;
        let mut buf = BytesMut::zeroed(want);
        let mut read_buf = ReadBuf::new(&mut buf);
        match Pin::new(&mut self.file).poll_read(cx, &mut read_buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {
                let n = read_buf.filled().len();
                if n == 0 {
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shrank while being served",
                    ))));
                }
                buf.truncate(n);
                self.remaining -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(buf.freeze()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
