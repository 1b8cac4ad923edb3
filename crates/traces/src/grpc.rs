//! OTLP/gRPC: the `opentelemetry.proto.collector.trace.v1.TraceService` server.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::codec::CompressionEncoding;

use super::Ingest;

/// Collectors commonly accept batches well above tonic's 4 MiB default.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

pub(super) async fn serve(listener: TcpListener, ingest: Arc<Ingest>) {
    let service = TraceServiceServer::new(OtlpGrpc { ingest })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        // The OpenTelemetry Collector's OTLP exporter compresses by default.
        .accept_compressed(CompressionEncoding::Gzip);
    let served = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming(TcpListenerStream::new(listener))
        .await;
    if let Err(e) = served {
        eprintln!("plexusctl traces: the OTLP/gRPC listener stopped: {e}");
    }
}

struct OtlpGrpc {
    ingest: Arc<Ingest>,
}

#[tonic::async_trait]
impl TraceService for OtlpGrpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        Ok(tonic::Response::new(
            self.ingest.export(request.into_inner()),
        ))
    }
}
