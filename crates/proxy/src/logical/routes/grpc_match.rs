//! GRPCRoute matches: service and method of the `/package.Service/Method`
//! path (Exact or full-match RegularExpression; empty = any), and headers.

use http::Request;
use plexus_api::v1 as proto;

use super::filters::Filters;
use super::{HeaderMatcher, Matcher, ProtoRule, ValueMatcher, compile_headers};

#[derive(Debug)]
pub struct GrpcMatcher {
    service: Option<ValueMatcher>,
    method: Option<ValueMatcher>,
    headers: Vec<HeaderMatcher>,
}

impl Matcher for GrpcMatcher {
    /// Exact service length, exact method length, header matches.
    type Precedence = (usize, usize, usize);

    fn precedence(&self) -> Self::Precedence {
        let exact_len = |m: &Option<ValueMatcher>| match m {
            Some(ValueMatcher::Exact(v)) => v.len(),
            _ => 0,
        };
        (
            exact_len(&self.service),
            exact_len(&self.method),
            self.headers.len(),
        )
    }

    fn matches<B>(&self, request: &Request<B>) -> bool {
        let Some((service, method)) = request
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
        else {
            return false;
        };
        self.service.as_ref().is_none_or(|m| m.matches(service))
            && self.method.as_ref().is_none_or(|m| m.matches(method))
            && self.headers.iter().all(|h| h.matches(request.headers()))
    }
}

impl ProtoRule for proto::GrpcRouteRule {
    type Matcher = GrpcMatcher;

    fn matchers(&self, field: &str) -> Result<Vec<GrpcMatcher>, String> {
        if self.matches.is_empty() {
            return Ok(vec![GrpcMatcher {
                service: None,
                method: None,
                headers: Vec::new(),
            }]);
        }
        self.matches
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let field = format!("{field}.matches[{i}]");
                let name = |value: &str, part: &str| {
                    (!value.is_empty())
                        .then(|| {
                            ValueMatcher::compile(&m.r#type, value, &format!("{field}.{part}"))
                        })
                        .transpose()
                };
                Ok(GrpcMatcher {
                    service: name(&m.service, "service")?,
                    method: name(&m.method, "method")?,
                    headers: compile_headers(&m.headers, &format!("{field}.headers"))?,
                })
            })
            .collect()
    }

    fn backends(&self) -> &[proto::WeightedBackend] {
        &self.backends
    }

    fn timeouts(&self) -> Option<&proto::Timeouts> {
        self.timeouts.as_ref()
    }

    fn retry(&self) -> Option<&proto::RetryPolicy> {
        self.retry.as_ref()
    }

    fn fault(&self) -> Option<&proto::Fault> {
        self.fault.as_ref()
    }

    fn filters(&self, field: &str) -> Result<Option<Filters>, String> {
        let Some(filters) = &self.filters else {
            return Ok(None);
        };
        Filters::headers(
            filters.request_header_modifier.as_ref(),
            filters.response_header_modifier.as_ref(),
            field,
        )
        .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::super::RouteTable;
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn grpc_requests_match_service_and_method_by_precedence() {
        let grpc_rule = |service: &str, method: &str, backend: &str| proto::GrpcRouteRule {
            matches: vec![proto::GrpcMatch {
                r#type: String::new(),
                service: service.into(),
                method: method.into(),
                headers: vec![],
            }],
            backends: vec![proto::WeightedBackend {
                backend: backend.into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let t = RouteTable::compile(
            &proto::RouteTable {
                grpc: vec![proto::GrpcRoute {
                    name: "g".into(),
                    rules: vec![
                        grpc_rule("", "Get", "any-get"),
                        grpc_rule("shop.Cart", "", "cart"),
                        grpc_rule("shop.Cart", "Get", "cart-get"),
                    ],
                }],
                http: vec![route("h", vec![rule(vec![], "http")])],
                default_backend: "default-svc".into(),
            },
            "default-svc",
        );
        let call = |path: &str| {
            Request::post(path)
                .header("content-type", "application/grpc+proto")
                .body(())
                .unwrap()
        };
        assert_eq!(backend(&t, call("/shop.Cart/Get")), "cart-get");
        assert_eq!(backend(&t, call("/shop.Cart/Put")), "cart");
        assert_eq!(backend(&t, call("/shop.Other/Get")), "any-get");
        assert_eq!(backend(&t, call("/shop.Other/Put")), "http");
        // Not gRPC: GRPCRoutes do not apply.
        assert_eq!(
            backend(&t, Request::post("/shop.Cart/Get").body(()).unwrap()),
            "http"
        );
    }
}
