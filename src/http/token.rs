//! `/token`: the Docker token service for sponsor accounts. `GET` with Basic
//! credentials (docker login, containerd, podman, crane) or an OAuth2
//! password grant by `POST`; either way a short-lived JWT for the host.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HOST};
use axum::http::{HeaderMap, HeaderValue, Method, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;

use super::registry::error_response;
use super::server::ClientAddr;
use crate::access::TokenRequest;
use crate::mirror::Mirror;
use crate::oci::error::RegistryError;

pub async fn token(
    State(mirror): State<Arc<Mirror>>,
    Extension(ClientAddr(client)): Extension<ClientAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let answered = match method {
        Method::GET => {
            let query = uri.query().unwrap_or_default();
            let basic = headers
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(basic_credentials);
            let credentials = basic.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
            let request = TokenRequest {
                client,
                host,
                credentials,
                scopes: scopes(form_values(query.as_bytes(), "scope")),
            };
            mirror.access.token(&mirror.router, request).await
        }
        Method::POST => {
            let grant_type = form_values(&body, "grant_type").into_iter().next();
            if grant_type.as_deref() != Some("password") {
                // Clients that offer another grant fall back to GET.
                Err(RegistryError::unsupported(
                    "only the password grant is supported; use GET with Basic credentials",
                ))
            } else {
                let user = form_values(&body, "username").into_iter().next();
                let password = form_values(&body, "password").into_iter().next();
                let credentials = user.as_deref().zip(password.as_deref());
                let request = TokenRequest {
                    client,
                    host,
                    credentials,
                    scopes: scopes(form_values(&body, "scope")),
                };
                mirror.access.token(&mirror.router, request).await
            }
        }
        _ => Err(RegistryError::method_not_allowed()),
    };
    match answered {
        Ok(issued) => {
            let body = serde_json::to_vec(&issued).unwrap_or_default();
            let mut response = body.into_response();
            response
                .headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(err) => error_response(&err),
    }
}

/// `user:password` from a Basic `Authorization` value.
fn basic_credentials(value: &str) -> Option<(String, String)> {
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn form_values(form: &[u8], key: &str) -> Vec<String> {
    url::form_urlencoded::parse(form)
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
        .collect()
}

/// Scopes arrive as repeated parameters, or several in one separated by
/// spaces.
fn scopes(values: Vec<String>) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| v.split(' '))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_read_and_bad_ones_ignored() {
        let encoded = base64::engine::general_purpose::STANDARD.encode("alice:pa:ss");
        assert_eq!(
            basic_credentials(&format!("Basic {encoded}")),
            Some(("alice".into(), "pa:ss".into()))
        );
        assert_eq!(basic_credentials("Bearer abc"), None);
        assert_eq!(basic_credentials("Basic !!!"), None);
        assert_eq!(basic_credentials("Basic"), None);
    }

    #[test]
    fn scopes_split_on_spaces() {
        assert_eq!(
            scopes(vec![
                "repository:a:pull repository:b:pull".into(),
                "x".into()
            ]),
            vec!["repository:a:pull", "repository:b:pull", "x"]
        );
    }
}
