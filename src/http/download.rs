//! Streaming a stored object to a client, whole or one byte range of it,
//! with the headers downloads need: type, length, ETag (the sha256),
//! disposition and `Accept-Ranges`.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};

use mlq_actors::ports::ObjectStore;
use mlq_actors::task::StoredArtifact;

use super::error::ApiError;

pub async fn serve(
    req: &HttpRequest,
    objects: &dyn ObjectStore,
    artifact: &StoredArtifact,
) -> Result<HttpResponse, ApiError> {
    let size = artifact.size as u64;
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| byte_range(v, size));
    let mut response = match range {
        None => HttpResponse::Ok(),
        Some(None) => return Err(ApiError::RangeNotSatisfiable { size }),
        Some(Some(_)) => HttpResponse::PartialContent(),
    };
    response
        .content_type(artifact.content_type.as_str())
        .insert_header((header::ETAG, format!("\"{}\"", artifact.sha256)))
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header(header::ContentDisposition::attachment(
            artifact.name.clone(),
        ));
    let body = match range {
        Some(Some((start, end))) => {
            response.insert_header((header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}")));
            objects.open_range(&artifact.key, start, end).await?
        }
        _ => objects.open(&artifact.key).await?,
    };
    Ok(response.no_chunking(body.size).streaming(body.stream))
}

/// Parses a `Range` header against an object of `size` bytes.
/// `None`: serve the whole object (no usable single range; RFC 9110 says
/// to ignore what cannot be parsed). `Some(None)`: unsatisfiable.
/// `Some(Some((start, end)))`: inclusive bounds within the object.
fn byte_range(header: &str, size: u64) -> Option<Option<(u64, u64)>> {
    let spec = header.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let range = if first.is_empty() {
        // A suffix: the last `last` bytes.
        let n: u64 = last.parse().ok()?;
        (n > 0 && size > 0).then(|| (size.saturating_sub(n), size - 1))
    } else {
        let start: u64 = first.parse().ok()?;
        let end = if last.is_empty() {
            size.saturating_sub(1)
        } else {
            last.parse::<u64>().ok()?.min(size.saturating_sub(1))
        };
        (start < size && start <= end).then_some((start, end))
    };
    Some(range)
}

#[cfg(test)]
mod tests {
    use super::byte_range;

    #[test]
    fn ranges_parse_as_rfc_9110_says() {
        assert_eq!(byte_range("bytes=0-9", 100), Some(Some((0, 9))));
        assert_eq!(byte_range("bytes=90-", 100), Some(Some((90, 99))));
        assert_eq!(byte_range("bytes=-10", 100), Some(Some((90, 99))));
        assert_eq!(byte_range("bytes=-500", 100), Some(Some((0, 99))));
        assert_eq!(byte_range("bytes=50-500", 100), Some(Some((50, 99))));
        assert_eq!(byte_range("bytes=100-", 100), Some(None));
        assert_eq!(byte_range("bytes=9-3", 100), Some(None));
        assert_eq!(
            byte_range("bytes=0-1,5-6", 100),
            None,
            "multiple ranges: whole object"
        );
        assert_eq!(byte_range("lines=1-2", 100), None);
        assert_eq!(byte_range("bytes=x-y", 100), None);
    }
}
