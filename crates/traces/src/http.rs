//! OTLP/HTTP with protobuf bodies, plain or gzip: `POST /v1/traces`.

use std::convert::Infallible;
use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use flate2::read::GzDecoder;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::Ingest;

pub(super) const TRACES_PATH: &str = "/v1/traces";
const PROTOBUF: &str = "application/x-protobuf";
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

pub(super) async fn serve(listener: TcpListener, ingest: Arc<Ingest>) {
    // Connections live in this set, so stopping the receiver closes them too.
    let mut connections = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Running out of file descriptors is transient; back off briefly.
                eprintln!("plexusctl traces: OTLP/HTTP accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let ingest = ingest.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let ingest = ingest.clone();
                async move { Ok::<_, Infallible>(handle(req, &ingest).await) }
            });
            // A client that disconnects mid-request is its own problem.
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(req: Request<Incoming>, ingest: &Ingest) -> Response<Full<Bytes>> {
    if req.uri().path() != TRACES_PATH {
        return text(StatusCode::NOT_FOUND, "only /v1/traces is served here");
    }
    if req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use POST");
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type.starts_with(PROTOBUF) {
        return text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content-type must be application/x-protobuf (OTLP/HTTP JSON is not supported)",
        );
    }
    let gzip = match req
        .headers()
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or_default().trim())
    {
        None | Some("identity") => false,
        Some("gzip") => true,
        Some(other) => {
            return text(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &format!("content-encoding {other:?} is not supported (use gzip or none)"),
            );
        }
    };
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the body is larger than {MAX_BODY_BYTES} bytes"),
            );
        }
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("reading the request body: {e}"),
            );
        }
    };
    let body = if gzip {
        match gunzip(&body, MAX_BODY_BYTES) {
            Ok(body) => body,
            Err((status, message)) => return text(status, &message),
        }
    } else {
        body
    };
    let request = match ExportTraceServiceRequest::decode(body) {
        Ok(r) => r,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("body is not an ExportTraceServiceRequest: {e}"),
            );
        }
    };
    let response = ingest.export(request);
    let mut res = Response::new(Full::new(Bytes::from(response.encode_to_vec())));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(PROTOBUF),
    );
    res
}

/// Inflates at most `max` bytes, so a small bomb cannot take the memory.
fn gunzip(compressed: &[u8], max: usize) -> Result<Bytes, (StatusCode, String)> {
    let mut inflated = Vec::new();
    let limit = max as u64 + 1;
    match GzDecoder::new(compressed)
        .take(limit)
        .read_to_end(&mut inflated)
    {
        Ok(_) if inflated.len() > max => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the inflated body is larger than {max} bytes"),
        )),
        Ok(_) => Ok(Bytes::from(inflated)),
        Err(e) => Err((
            StatusCode::BAD_REQUEST,
            format!("the body is not valid gzip: {e}"),
        )),
    }
}

fn text(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(message.to_owned())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(data).expect("compress");
        encoder.finish().expect("compress")
    }

    #[test]
    fn inflation_is_capped() {
        let bomb = gzip(&[0; 10_000]);
        assert!(bomb.len() < 1_000);
        assert_eq!(gunzip(&bomb, 10_000).map(|b| b.len()), Ok(10_000));
        let (status, message) = gunzip(&bomb, 9_999).expect_err("over the cap");
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(message.contains("9999"), "{message}");
    }
}
