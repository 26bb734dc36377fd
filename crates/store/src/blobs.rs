//! Blob storage for source and turn images: a local folder or S3, through
//! the `object_store` crate. Rows hold keys; this holds bytes.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};
use uuid::Uuid;

/// Errors of the blob store.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// A blob URL we cannot use.
    #[error("unsupported blob_url: {0}")]
    BadUrl(String),
    /// A key that is not a valid object path.
    #[error("invalid blob key {0:?}")]
    BadKey(String),
    /// No blob under that key.
    #[error("blob {0} not found")]
    NotFound(String),
    /// Creating the local folder failed.
    #[error("blob folder: {0}")]
    Io(#[from] std::io::Error),
    /// The object store failed.
    #[error("object store error: {0}")]
    Store(#[from] object_store::Error),
}

/// Image bytes by key, in a local folder (`file://`) or an S3-compatible
/// bucket (`s3://`).
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<dyn ObjectStore>,
    /// Prepended to every key (`s3://bucket/prefix`); empty for none.
    prefix: String,
    url: String,
    /// The folder of a `file://` store: deleting its files leaves their
    /// folders behind, which [`BlobStore::delete_job`] removes too.
    local_root: Option<PathBuf>,
}

impl fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobStore").field("url", &self.url).finish()
    }
}

impl BlobStore {
    /// Opens `file://relative/path` (relative to the working directory),
    /// `file:///absolute/path` (the folder is created when missing), or
    /// `s3://bucket/prefix` (credentials, region and endpoint from the usual
    /// `AWS_*` environment variables).
    pub fn from_url(url: &str) -> Result<Self, BlobError> {
        if let Some(path) = url.strip_prefix("file://") {
            // Not parsed as a URL: `file://data/blobs` would make `data` a host.
            if path.is_empty() {
                return Err(BlobError::BadUrl(format!("{url}: empty path")));
            }
            let dir = PathBuf::from(path);
            std::fs::create_dir_all(&dir)?;
            let local = LocalFileSystem::new_with_prefix(&dir)?;
            Ok(Self {
                inner: Arc::new(local),
                prefix: String::new(),
                url: url.to_owned(),
                local_root: Some(dir),
            })
        } else if url.starts_with("s3://") {
            let parsed =
                url::Url::parse(url).map_err(|e| BlobError::BadUrl(format!("{url}: {e}")))?;
            let bucket = parsed
                .host_str()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| BlobError::BadUrl(format!("{url}: no bucket")))?;
            let s3 = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()?;
            Ok(Self {
                inner: Arc::new(s3),
                prefix: parsed.path().trim_matches('/').to_owned(),
                url: url.to_owned(),
                local_root: None,
            })
        } else {
            Err(BlobError::BadUrl(format!(
                "{url}: expected file://… or s3://…"
            )))
        }
    }

    /// The URL this store was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, key: &str) -> Result<Path, BlobError> {
        let full = if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.prefix)
        };
        let path = Path::parse(&full).map_err(|_| BlobError::BadKey(key.to_owned()))?;
        // Path::parse accepts "" and normalises away nothing else, so an
        // empty key would address the root.
        if key.is_empty() || path.as_ref().is_empty() {
            return Err(BlobError::BadKey(key.to_owned()));
        }
        Ok(path)
    }

    /// Stores `bytes` under `key`, replacing any blob there.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), BlobError> {
        let path = self.path(key)?;
        self.inner.put(&path, PutPayload::from(bytes)).await?;
        Ok(())
    }

    /// The blob under `key`; [`BlobError::NotFound`] when there is none.
    pub async fn get(&self, key: &str) -> Result<Bytes, BlobError> {
        let path = self.path(key)?;
        let not_found = |e: object_store::Error| match e {
            object_store::Error::NotFound { .. } => BlobError::NotFound(key.to_owned()),
            e => BlobError::Store(e),
        };
        let result = self.inner.get(&path).await.map_err(not_found)?;
        result.bytes().await.map_err(not_found)
    }

    /// Deletes every blob of a job (everything under `jobs/{id}/`: its
    /// source and every turn image ever written, lost attempts' included).
    pub async fn delete_job(&self, job_id: Uuid) -> Result<(), BlobError> {
        use futures::TryStreamExt;
        let prefix = self.path(&format!("jobs/{job_id}"))?;
        let paths = self
            .inner
            .list(Some(&prefix))
            .map_ok(|meta| meta.location)
            .boxed();
        let mut deleted = self.inner.delete_stream(paths);
        while let Some(result) = deleted.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(root) = &self.local_root {
            match std::fs::remove_dir_all(root.join("jobs").join(job_id.to_string())) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        Ok(())
    }

    /// The ids of the jobs that have a blob folder (`jobs/{id}/`).
    pub async fn job_folders(&self) -> Result<Vec<Uuid>, BlobError> {
        let prefix = self.path("jobs")?;
        let listing = match self.inner.list_with_delimiter(Some(&prefix)).await {
            Ok(listing) => listing,
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        Ok(listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().and_then(|name| Uuid::parse_str(name).ok()))
            .collect())
    }

    /// The key of a job's source image: `jobs/{id}/source.{ext}`.
    pub fn source_key(job_id: Uuid, extension: &str) -> String {
        format!("jobs/{job_id}/source.{extension}")
    }

    /// A fresh key for one write of a turn's image:
    /// `jobs/{id}/turns/{index}-a{attempt}-{random}.png`. Unique per write,
    /// so a worker that lost its lease can never overwrite the image of a
    /// recorded turn.
    pub fn turn_key(job_id: Uuid, index: u32, attempt: u32) -> String {
        format!(
            "jobs/{job_id}/turns/{index}-a{attempt}-{:016x}.png",
            rand::random::<u64>()
        )
    }

    /// A per-write key for candidate `candidate` of turn `index`, like
    /// [`Self::turn_key`]'s.
    pub fn candidate_key(job_id: Uuid, index: u32, candidate: u32, attempt: u32) -> String {
        format!(
            "jobs/{job_id}/turns/{index}-c{candidate}-a{attempt}-{:016x}.png",
            rand::random::<u64>()
        )
    }

    /// Whether what `key` names can never change: sources (written once, at
    /// creation) and turn images under per-write keys. Turn images from
    /// before per-write keys (`turns/{index}.png`) could be overwritten.
    pub fn is_immutable_key(key: &str) -> bool {
        match key.rsplit_once("/turns/") {
            Some((_, name)) => name.contains("-a"),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("et-blobs-{}", Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn put_get_round_trip_and_not_found() {
        let dir = temp_dir();
        let root = dir.join("nested/blobs");
        let store = BlobStore::from_url(&format!("file://{}", root.display())).unwrap();
        assert!(root.is_dir(), "the folder is created");

        let id = Uuid::now_v7();
        let key = BlobStore::turn_key(id, 2, 1);
        store.put(&key, Bytes::from_static(b"png")).await.unwrap();
        assert_eq!(store.get(&key).await.unwrap(), Bytes::from_static(b"png"));
        assert!(root.join(&key).is_file(), "stored under the folder by key");

        store.put(&key, Bytes::from_static(b"v2")).await.unwrap();
        assert_eq!(store.get(&key).await.unwrap(), Bytes::from_static(b"v2"));

        let missing = BlobStore::source_key(id, "jpg");
        match store.get(&missing).await {
            Err(BlobError::NotFound(k)) => assert_eq!(k, missing),
            other => panic!("expected NotFound, got {other:?}"),
        }
        assert!(matches!(store.get("").await, Err(BlobError::BadKey(_))));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn relative_file_url_is_relative_to_cwd() {
        let rel = format!("target/et-blobs-test-{}", Uuid::now_v7().simple());
        let store = BlobStore::from_url(&format!("file://{rel}")).unwrap();
        store
            .put("a/b.bin", Bytes::from_static(b"x"))
            .await
            .unwrap();
        let on_disk = std::env::current_dir().unwrap().join(&rel).join("a/b.bin");
        assert_eq!(std::fs::read(&on_disk).unwrap(), b"x");
        std::fs::remove_dir_all(&rel).unwrap();
    }

    #[test]
    fn keys() {
        let id = Uuid::parse_str("0190a5e4-7c1b-7000-8000-000000000001").unwrap();
        assert_eq!(
            BlobStore::source_key(id, "png"),
            "jobs/0190a5e4-7c1b-7000-8000-000000000001/source.png"
        );
        let turn = BlobStore::turn_key(id, 3, 2);
        assert!(
            turn.starts_with("jobs/0190a5e4-7c1b-7000-8000-000000000001/turns/3-a2-"),
            "{turn}"
        );
        assert_ne!(turn, BlobStore::turn_key(id, 3, 2), "unique per write");
        assert!(BlobStore::is_immutable_key(&turn));
        assert!(BlobStore::is_immutable_key(&BlobStore::source_key(
            id, "png"
        )));
        assert!(!BlobStore::is_immutable_key("jobs/x/turns/3.png"));
    }

    #[test]
    fn s3_url_takes_bucket_and_prefix() {
        let store = BlobStore::from_url("s3://my-bucket/some/prefix/").unwrap();
        assert_eq!(store.prefix, "some/prefix");
        assert_eq!(
            store.path("jobs/x/source.png").unwrap().as_ref(),
            "some/prefix/jobs/x/source.png"
        );
    }

    #[test]
    fn bad_urls() {
        assert!(matches!(
            BlobStore::from_url("ftp://x"),
            Err(BlobError::BadUrl(_))
        ));
        assert!(matches!(
            BlobStore::from_url("s3://"),
            Err(BlobError::BadUrl(_))
        ));
        assert!(matches!(
            BlobStore::from_url("file://"),
            Err(BlobError::BadUrl(_))
        ));
    }
}
