//! In a cluster: a projected ServiceAccount token is checked by the API
//! server (TokenReview, authentication.k8s.io/v1) for the audience
//! `plexus-identity`.

use futures_util::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::{Api, PostParams};
use plexus_identity::SpiffeId;

use super::token::{TokenAuthority, TokenError};

/// The audience proxies' projected tokens are minted for.
pub const AUDIENCE: &str = "plexus-identity";

pub struct TokenReviewer {
    api: Api<TokenReview>,
    trust_domain: String,
}

impl TokenReviewer {
    pub fn new(client: kube::Client, trust_domain: &str) -> Self {
        Self {
            api: Api::all(client),
            trust_domain: trust_domain.to_owned(),
        }
    }

    async fn review(&self, token: &str) -> Result<SpiffeId, TokenError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![AUDIENCE.to_owned()]),
            },
            ..TokenReview::default()
        };
        let answer = self
            .api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| TokenError::Unavailable(format!("TokenReview: {e}")))?;
        identity_of_review(answer.status.unwrap_or_default(), &self.trust_domain)
    }
}

impl TokenAuthority for TokenReviewer {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<SpiffeId, TokenError>> {
        Box::pin(self.review(token))
    }
}

fn identity_of_review(
    status: TokenReviewStatus,
    trust_domain: &str,
) -> Result<SpiffeId, TokenError> {
    if status.authenticated != Some(true) {
        let why = status.error.unwrap_or_else(|| "not authenticated".into());
        return Err(TokenError::Refused(format!("TokenReview: {why}")));
    }
    // An authenticator that ignores audiences answers without echoing ours;
    // the API documents that such an answer must be treated as a refusal.
    let audiences = status.audiences.unwrap_or_default();
    if !audiences.iter().any(|a| a == AUDIENCE) {
        return Err(TokenError::Refused(format!(
            "TokenReview: token not valid for audience {AUDIENCE} (valid for {audiences:?})"
        )));
    }
    let username = status.user.and_then(|u| u.username).unwrap_or_default();
    let Some(account) = username.strip_prefix("system:serviceaccount:") else {
        return Err(TokenError::Refused(format!(
            "TokenReview: {username:?} is not a ServiceAccount"
        )));
    };
    let (namespace, service_account) = account.split_once(':').ok_or_else(|| {
        TokenError::Refused(format!("TokenReview: malformed username {username:?}"))
    })?;
    SpiffeId::new(trust_domain, namespace, service_account)
        .map_err(|e| TokenError::Refused(format!("TokenReview: {username:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::test_api::{ApiStandIn, Reply};
    use serde_json::json;

    const PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

    /// Answers like an API server whose only valid token is `good`, minted
    /// for `audience`, for the ServiceAccount shop/web.
    async fn api_server(audience: &'static str) -> ApiStandIn {
        ApiStandIn::start(move |method, path, body| {
            assert_eq!((method.as_str(), path), ("POST", PATH));
            let review: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let token = review["spec"]["token"].as_str().unwrap_or_default();
            let asked: Vec<String> =
                serde_json::from_value(review["spec"]["audiences"].clone()).unwrap_or_default();
            let status = if token == "good" && asked.iter().any(|a| a == audience) {
                json!({
                    "authenticated": true,
                    "audiences": [audience],
                    "user": {"username": "system:serviceaccount:shop:web"}
                })
            } else {
                json!({"authenticated": false, "error": "invalid bearer token"})
            };
            Reply::json(
                201,
                json!({
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenReview",
                    "metadata": {},
                    "spec": review["spec"],
                    "status": status
                }),
            )
        })
        .await
    }

    #[tokio::test]
    async fn a_good_token_proves_its_service_account() {
        let server = api_server(AUDIENCE).await;
        let reviewer = TokenReviewer::new(server.client(), "td");
        assert_eq!(
            reviewer.authenticate("good").await.unwrap(),
            "spiffe://td/ns/shop/sa/web".parse().unwrap()
        );
        assert!(matches!(
            reviewer.authenticate("bad").await,
            Err(TokenError::Refused(_))
        ));
    }

    #[tokio::test]
    async fn a_token_for_another_audience_is_refused() {
        let server = api_server("https://kubernetes.default.svc").await;
        let reviewer = TokenReviewer::new(server.client(), "td");
        let err = reviewer.authenticate("good").await.unwrap_err();
        assert!(matches!(err, TokenError::Refused(_)), "{err}");
    }

    #[test]
    fn answers_that_ignore_the_audience_or_name_no_service_account_are_refused() {
        let user = |name: &str| {
            Some(k8s_openapi::api::authentication::v1::UserInfo {
                username: Some(name.into()),
                ..Default::default()
            })
        };
        let no_audience = TokenReviewStatus {
            authenticated: Some(true),
            audiences: None,
            user: user("system:serviceaccount:shop:web"),
            ..Default::default()
        };
        assert!(identity_of_review(no_audience, "td").is_err());
        for name in [
            "admin",
            "system:serviceaccount:shop",
            "system:serviceaccount:Shop:web",
        ] {
            let status = TokenReviewStatus {
                authenticated: Some(true),
                audiences: Some(vec![AUDIENCE.into()]),
                user: user(name),
                ..Default::default()
            };
            assert!(identity_of_review(status, "td").is_err(), "{name}");
        }
    }

    #[tokio::test]
    async fn an_unreachable_api_server_is_unavailable_not_refused() {
        let client =
            crate::identity::test_api::client_for(&crate::identity::test_api::unreachable_url());
        let reviewer = TokenReviewer::new(client, "td");
        let err = reviewer.authenticate("good").await.unwrap_err();
        assert!(matches!(err, TokenError::Unavailable(_)), "{err}");
    }
}
