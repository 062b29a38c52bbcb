//! The S3-compatible object store (AWS S3, MinIO, Garage, R2, …) via
//! rust-s3.
//!
//! Uploads drive the multipart API directly, with a fixed part size and a
//! fixed number of parts in flight, so one upload holds at most
//! `part_size × (parts_in_flight + 1)` bytes however large the file.
//! (rust-s3's own `put_object_stream` sizes its concurrency from free
//! memory, up to about 100 parts of 8 MiB.) Objects smaller than one part
//! go up as a single PUT. A failed or abandoned upload is aborted, so no
//! half-written object is ever visible.

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::TryStreamExt;
use s3::creds::Credentials;
use s3::error::S3Error;
use s3::serde_types::Part;
use s3::{Bucket, BucketConfiguration, Region};
use tokio::task::JoinHandle;

use mlq_actors::ports::{
    ObjectBody, ObjectError, ObjectInfo, ObjectKey, ObjectStore, ObjectWriter,
};

/// How to reach the bucket.
#[derive(Debug, Clone)]
pub struct S3Config {
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    pub path_style: bool,
    /// `None` reads the standard `AWS_*` variables.
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub create_bucket: bool,
    pub part_size: usize,
    pub parts_in_flight: usize,
}

impl From<&crate::config::Settings> for S3Config {
    fn from(s: &crate::config::Settings) -> Self {
        use secrecy::ExposeSecret;
        Self {
            endpoint: s.s3_endpoint.clone(),
            region: s.s3_region.clone(),
            bucket: s.s3_bucket.clone(),
            path_style: s.s3_path_style,
            access_key: s.s3_access_key.clone(),
            secret_key: s
                .s3_secret_key
                .as_ref()
                .map(|k| k.expose_secret().to_owned()),
            create_bucket: s.s3_create_bucket,
            part_size: s.s3_part_size,
            parts_in_flight: s.s3_parts_in_flight,
        }
    }
}

/// A reqwest error's text without its URL: a presigned URL carries a
/// signature that must not reach logs or clients.
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "<presigned URL>");
    }
    text
}

/// Why the bucket cannot be used; each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum S3SetupError {
    #[error("S3 credentials are missing or invalid: {0}; set MLQ_S3_ACCESS_KEY and MLQ_S3_SECRET_KEY or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")]
    Credentials(String),
    #[error("S3 bucket {0:?} does not exist; create it, or set MLQ_S3_CREATE_BUCKET=true")]
    MissingBucket(String),
    #[error("S3 denied access to bucket {bucket:?} with the configured credentials (HTTP {status}); check the access key, the secret and the bucket policy")]
    AccessDenied { bucket: String, status: u16 },
    #[error("cannot use S3 bucket {bucket:?} at {endpoint}: {reason}")]
    Unreachable {
        bucket: String,
        endpoint: String,
        reason: String,
    },
}

pub struct S3Store {
    bucket: Arc<Bucket>,
    http: reqwest::Client,
    /// For downloads: connect and idle timeouts, no total timeout.
    reader: reqwest::Client,
    part_size: usize,
    parts_in_flight: usize,
}

impl S3Store {
    /// Connects and checks that the bucket can be listed, creating it first
    /// when configured to.
    pub async fn connect(config: &S3Config) -> Result<Self, S3SetupError> {
        let region = match &config.endpoint {
            Some(endpoint) => Region::Custom {
                region: config.region.clone(),
                endpoint: endpoint.clone(),
            },
            None => config
                .region
                .parse()
                .map_err(|e| S3SetupError::Credentials(format!("unknown region: {e}")))?,
        };
        let credentials = match (&config.access_key, &config.secret_key) {
            (Some(access), Some(secret)) => {
                Credentials::new(Some(access), Some(secret), None, None, None)
            }
            _ => Credentials::from_env(),
        }
        .map_err(|e| S3SetupError::Credentials(e.to_string()))?;
        let mut bucket = Bucket::new(&config.bucket, region.clone(), credentials.clone())
            .map_err(|e| S3SetupError::Credentials(e.to_string()))?;
        if config.path_style {
            bucket = bucket.with_path_style();
        }
        let endpoint = config.endpoint.clone().unwrap_or_else(|| "AWS".into());
        match bucket
            .list_page(String::new(), None, None, None, Some(1))
            .await
        {
            Ok(_) => {}
            Err(S3Error::HttpFailWithBody(404, _)) if config.create_bucket => {
                let created = if config.path_style {
                    Bucket::create_with_path_style(
                        &config.bucket,
                        region,
                        credentials,
                        BucketConfiguration::default(),
                    )
                    .await
                } else {
                    Bucket::create(
                        &config.bucket,
                        region,
                        credentials,
                        BucketConfiguration::default(),
                    )
                    .await
                };
                match created {
                    Ok(r) if r.success() => {
                        tracing::info!(bucket = %config.bucket, "created S3 bucket")
                    }
                    Ok(r) => {
                        return Err(classify(
                            &config.bucket,
                            &endpoint,
                            S3Error::HttpFailWithBody(r.response_code, r.response_text),
                        ))
                    }
                    Err(e) => return Err(classify(&config.bucket, &endpoint, e)),
                }
            }
            Err(e) => return Err(classify(&config.bucket, &endpoint, e)),
        }
        Ok(Self {
            bucket: Arc::from(bucket),
            // A stalled connection must not hold an upload (and its part
            // buffers) forever.
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(10))
                .timeout(std::time::Duration::from_secs(300))
                .build()
                .map_err(|e| S3SetupError::Credentials(e.to_string()))?,
            reader: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(10))
                .read_timeout(std::time::Duration::from_secs(30))
                .build()
                .map_err(|e| S3SetupError::Credentials(e.to_string()))?,
            part_size: config.part_size.max(5 << 20),
            parts_in_flight: config.parts_in_flight.max(1),
        })
    }
}

impl S3Store {
    /// Streams an object, or one range of it, through a presigned GET on
    /// the reading client: it has a connect timeout and an idle timeout
    /// between reads, but no limit on the whole transfer, so a slow download
    /// of a large object completes while a stalled one fails.
    async fn get(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
        size: u64,
    ) -> Result<ObjectBody, ObjectError> {
        let url = self
            .bucket
            .presign_get(key, 3600, None)
            .await
            .map_err(|e| object_error(key, e))?;
        let mut request = self.reader.get(&url);
        if let Some((start, end)) = range {
            request = request.header("range", format!("bytes={start}-{end}"));
        }
        let response = request
            .send()
            .await
            .map_err(|e| ObjectError::Backend(format!("GET {key}: {}", without_url(&e))))?;
        let status = response.status().as_u16();
        match status {
            // A server that ignored the range would send the whole object
            // under the range's length.
            200 if range.is_some() => {
                return Err(ObjectError::Backend(format!(
                    "GET {key} ignored the requested range"
                )))
            }
            200..=299 => {}
            404 => return Err(ObjectError::NotFound(key.to_owned())),
            _ => return Err(ObjectError::Backend(format!("GET {key} answered {status}"))),
        }
        let key = key.to_owned();
        Ok(ObjectBody {
            size,
            stream: Box::pin(response.bytes_stream().map_err(move |e| {
                ObjectError::Backend(format!("reading {key}: {}", without_url(&e)))
            })),
        })
    }

    /// The object's size, or `NotFound`.
    async fn size(&self, key: &str) -> Result<u64, ObjectError> {
        let (head, status) = self
            .bucket
            .head_object(key)
            .await
            .map_err(|e| object_error(key, e))?;
        if status == 404 {
            return Err(ObjectError::NotFound(key.to_owned()));
        }
        Ok(head.content_length.unwrap_or(0).max(0) as u64)
    }
}

fn classify(bucket: &str, endpoint: &str, e: S3Error) -> S3SetupError {
    match e {
        S3Error::HttpFailWithBody(404, _) => S3SetupError::MissingBucket(bucket.to_owned()),
        S3Error::HttpFailWithBody(status @ (401 | 403), _) => S3SetupError::AccessDenied {
            bucket: bucket.to_owned(),
            status,
        },
        e => S3SetupError::Unreachable {
            bucket: bucket.to_owned(),
            endpoint: endpoint.to_owned(),
            reason: e.to_string(),
        },
    }
}

fn object_error(key: &str, e: S3Error) -> ObjectError {
    match e {
        S3Error::HttpFailWithBody(404, _) => ObjectError::NotFound(key.to_owned()),
        e => ObjectError::Backend(e.to_string()),
    }
}

struct S3Writer {
    bucket: Arc<Bucket>,
    key: String,
    content_type: String,
    part_size: usize,
    parts_in_flight: usize,
    buffer: Vec<u8>,
    upload_id: Option<String>,
    next_part: u32,
    in_flight: VecDeque<JoinHandle<Result<Part, S3Error>>>,
    parts: Vec<Part>,
    done: bool,
    http: reqwest::Client,
}

/// Uploads one part through a presigned URL. rust-s3's own
/// `put_multipart_chunk` hashes every part twice (Content-MD5 and the SigV4
/// payload sha256), and the server then hashes it again to check both; a
/// presigned URL signs the request with an unsigned payload instead. The
/// object's integrity is still checked end to end: mlq records the sha256
/// it computed while streaming.
async fn put_part(
    bucket: &Bucket,
    http: &reqwest::Client,
    key: &str,
    upload_id: &str,
    number: u32,
    part: Vec<u8>,
) -> Result<Part, S3Error> {
    let part = Bytes::from(part);
    let queries = std::collections::HashMap::from([
        ("partNumber".to_owned(), number.to_string()),
        ("uploadId".to_owned(), upload_id.to_owned()),
    ]);
    let url = bucket.presign_put(key, 3600, None, Some(queries)).await?;
    // A dropped connection or a 5xx is worth another try; the part is kept
    // (a cheap clone of `Bytes`) until it is acknowledged.
    let mut delay = std::time::Duration::from_millis(200);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let failure = match http.put(&url).body(part.clone()).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let etag = response
                    .headers()
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                match etag {
                    Some(etag) if status < 300 => {
                        return Ok(Part {
                            part_number: number,
                            etag,
                        })
                    }
                    _ => {
                        S3Error::HttpFailWithBody(status, response.text().await.unwrap_or_default())
                    }
                }
            }
            Err(e) => S3Error::HttpFailWithBody(0, without_url(&e)),
        };
        let transient = matches!(failure, S3Error::HttpFailWithBody(0 | 500..=599, _));
        if !transient || attempt == 3 {
            return Err(failure);
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
}

impl S3Writer {
    /// Sends one part, first waiting for a slot if the maximum is in flight.
    async fn send_part(&mut self, part: Vec<u8>) -> Result<(), ObjectError> {
        if self.upload_id.is_none() {
            let started = self
                .bucket
                .initiate_multipart_upload(&self.key, &self.content_type)
                .await
                .map_err(|e| object_error(&self.key, e))?;
            self.upload_id = Some(started.upload_id);
        }
        while self.in_flight.len() >= self.parts_in_flight {
            self.wait_one().await?;
        }
        self.next_part += 1;
        let (bucket, key, number) = (self.bucket.clone(), self.key.clone(), self.next_part);
        let (upload_id, http) = (
            self.upload_id.clone().unwrap_or_default(),
            self.http.clone(),
        );
        self.in_flight.push_back(tokio::spawn(async move {
            put_part(&bucket, &http, &key, &upload_id, number, part).await
        }));
        Ok(())
    }

    async fn wait_one(&mut self) -> Result<(), ObjectError> {
        if let Some(handle) = self.in_flight.pop_front() {
            let part = handle
                .await
                .map_err(|e| ObjectError::Backend(e.to_string()))?
                .map_err(|e| object_error(&self.key, e))?;
            self.parts.push(part);
        }
        Ok(())
    }

    async fn complete(&mut self) -> Result<(), ObjectError> {
        if self.upload_id.is_none() {
            let response = self
                .bucket
                .put_object_with_content_type(&self.key, &self.buffer, &self.content_type)
                .await
                .map_err(|e| object_error(&self.key, e))?;
            if response.status_code() >= 300 {
                return Err(ObjectError::Backend(format!(
                    "PUT {} answered {}",
                    self.key,
                    response.status_code()
                )));
            }
            return Ok(());
        }
        if !self.buffer.is_empty() {
            let last = std::mem::take(&mut self.buffer);
            self.send_part(last).await?;
        }
        while !self.in_flight.is_empty() {
            self.wait_one().await?;
        }
        self.parts.sort_by_key(|p| p.part_number);
        let upload_id = self.upload_id.clone().unwrap_or_default();
        self.bucket
            .complete_multipart_upload(&self.key, &upload_id, std::mem::take(&mut self.parts))
            .await
            .map_err(|e| object_error(&self.key, e))?;
        Ok(())
    }

    /// Stops parts in flight and aborts the multipart upload, so the store
    /// keeps nothing of it.
    fn abort_now(&mut self) {
        self.done = true;
        for handle in self.in_flight.drain(..) {
            handle.abort();
        }
        if let Some(upload_id) = self.upload_id.take() {
            let (bucket, key) = (self.bucket.clone(), self.key.clone());
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                tracing::warn!(%key, "multipart upload left open: no runtime to abort it");
                return;
            };
            runtime.spawn(async move {
                if let Err(e) = bucket.abort_upload(&key, &upload_id).await {
                    tracing::warn!(%key, "could not abort multipart upload: {e}");
                }
            });
        }
    }
}

#[async_trait]
impl ObjectWriter for S3Writer {
    async fn write(&mut self, chunk: Bytes) -> Result<(), ObjectError> {
        let mut chunk = &chunk[..];
        while !chunk.is_empty() {
            let room = self.part_size - self.buffer.len();
            let take = room.min(chunk.len());
            self.buffer.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if self.buffer.len() == self.part_size {
                let part = std::mem::replace(&mut self.buffer, Vec::with_capacity(self.part_size));
                self.send_part(part).await?;
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<(), ObjectError> {
        let result = self.complete().await;
        if result.is_err() {
            self.abort_now();
        }
        self.done = true;
        result
    }

    async fn abort(mut self: Box<Self>) {
        self.abort_now();
    }
}

/// A writer dropped unfinished (its request was cancelled when the client
/// went away) aborts its upload.
impl Drop for S3Writer {
    fn drop(&mut self) {
        if !self.done {
            self.abort_now();
        }
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn writer(
        &self,
        key: &str,
        content_type: &str,
    ) -> Result<Box<dyn ObjectWriter>, ObjectError> {
        Ok(Box::new(S3Writer {
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            content_type: content_type.to_owned(),
            part_size: self.part_size,
            parts_in_flight: self.parts_in_flight,
            buffer: Vec::with_capacity(self.part_size),
            upload_id: None,
            next_part: 0,
            in_flight: VecDeque::new(),
            parts: Vec::new(),
            done: false,
            http: self.http.clone(),
        }))
    }

    async fn open(&self, key: &str) -> Result<ObjectBody, ObjectError> {
        let size = self.size(key).await?;
        self.get(key, None, size).await
    }

    async fn open_range(&self, key: &str, start: u64, end: u64) -> Result<ObjectBody, ObjectError> {
        // Known to exist before the response starts: a failure after the
        // first byte could only cut a 206 short.
        self.size(key).await?;
        self.get(key, Some((start, end)), end + 1 - start).await
    }

    async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        match self.bucket.delete_object(key).await {
            Ok(_) | Err(S3Error::HttpFailWithBody(404, _)) => Ok(()),
            Err(e) => Err(object_error(key, e)),
        }
    }

    async fn abort_stale_writes(
        &self,
        before: std::time::SystemTime,
    ) -> Result<usize, ObjectError> {
        let pages = self
            .bucket
            .list_multiparts_uploads(None, None)
            .await
            .map_err(|e| object_error("multipart uploads", e))?;
        let mut aborted = 0;
        for upload in pages.into_iter().flat_map(|page| page.uploads) {
            // Only mlq's own keys; and an upload whose start cannot be read
            // is left alone rather than taken for ancient.
            if !ObjectKey::PREFIXES
                .iter()
                .any(|p| upload.key.starts_with(p))
            {
                continue;
            }
            let Ok(started) = chrono::DateTime::parse_from_rfc3339(&upload.initiated) else {
                tracing::warn!(key = %upload.key, initiated = %upload.initiated, "a multipart upload with an unreadable start time is left alone");
                continue;
            };
            if std::time::SystemTime::from(started) >= before {
                continue;
            }
            match self.bucket.abort_upload(&upload.key, &upload.id).await {
                Ok(()) | Err(S3Error::HttpFailWithBody(404, _)) => aborted += 1,
                Err(e) => {
                    tracing::warn!(key = %upload.key, "could not abort a stale multipart upload: {e}")
                }
            }
        }
        Ok(aborted)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, ObjectError> {
        let pages = self
            .bucket
            .list(prefix.to_owned(), None)
            .await
            .map_err(|e| object_error(prefix, e))?;
        Ok(pages
            .into_iter()
            .flat_map(|page| page.contents)
            .map(|o| ObjectInfo {
                modified: chrono::DateTime::parse_from_rfc3339(&o.last_modified)
                    .map(std::time::SystemTime::from)
                    .unwrap_or(std::time::SystemTime::UNIX_EPOCH),
                key: o.key,
                size: o.size,
            })
            .collect())
    }
}
