//! An in-process Docker token service (the `realm` of a token-auth registry) that signs ES256 JWTs carrying an x5c certificate chain.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::Rng;
use serde_json::json;
use tempfile::TempDir;
use tokio::task::JoinHandle;

/// One request the issuer saw, whether or not it granted a token.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub method: String,
    pub service: Option<String>,
    pub scopes: Vec<String>,
    pub authorization: Option<String>,
    pub granted: bool,
}

struct IssuerState {
    key: EncodingKey,
    x5c: String,
    credentials: Mutex<Option<(String, String)>>,
    lifetime: Mutex<Duration>,
    requests: Mutex<Vec<TokenRequest>>,
}

pub struct TokenIssuer {
    dir: TempDir,
    port: u16,
    state: Arc<IssuerState>,
    task: JoinHandle<()>,
}

impl TokenIssuer {
    /// The `service` (JWT audience) registries are configured with.
    pub const SERVICE: &'static str = "lank8s-test-registry";
    /// The `iss` claim registries are configured to trust.
    pub const ISSUER: &'static str = "lank8s-test-issuer";

    /// An issuer that hands tokens to anyone (like Docker Hub for public images).
    pub async fn start() -> TokenIssuer {
        Self::launch(None).await
    }

    /// An issuer that answers 401 unless the request carries these Basic credentials.
    pub async fn start_with_credentials(user: &str, pass: &str) -> TokenIssuer {
        Self::launch(Some((user.to_string(), pass.to_string()))).await
    }

    async fn launch(credentials: Option<(String, String)>) -> TokenIssuer {
        let dir = tempfile::Builder::new()
            .prefix("lank8s-issuer-")
            .tempdir()
            .expect("create issuer tempdir");
        let (key, der) = make_key_and_cert(dir.path());
        let state = Arc::new(IssuerState {
            key,
            x5c: super::base64_encode(&der),
            credentials: Mutex::new(credentials),
            lifetime: Mutex::new(Duration::from_secs(300)),
            requests: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind token issuer");
        let port = listener.local_addr().expect("issuer addr").port();
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TokenIssuer {
            dir,
            port,
            state,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What goes into the registry's `auth.token.realm`.
    pub fn realm(&self) -> String {
        format!("{}/token", self.url())
    }

    /// PEM of the self-signed certificate, for the registry's `rootcertbundle`.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    pub fn credentials(&self) -> Option<(String, String)> {
        self.state.credentials.lock().unwrap().clone()
    }

    /// From now on only these credentials are accepted, as after a password
    /// rotation; what was accepted before gets 401. Tokens already issued stay
    /// valid (a registry checks their signature, not the password).
    pub fn set_credentials(&self, user: &str, pass: &str) {
        *self.state.credentials.lock().unwrap() = Some((user.to_string(), pass.to_string()));
    }

    /// How long newly issued tokens live (`exp` and `expires_in`). Default 300 s.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        *self.state.lifetime.lock().unwrap() = lifetime;
    }

    /// Every request to the issuer, granted or refused.
    pub fn token_requests(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    /// Requests that were answered with a token.
    pub fn granted_requests(&self) -> usize {
        self.requests().iter().filter(|r| r.granted).count()
    }

    /// Every scope asked for, in order, e.g. `repository:library/x:pull`.
    pub fn scopes(&self) -> Vec<String> {
        self.requests().into_iter().flat_map(|r| r.scopes).collect()
    }

    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Mints a token directly, bypassing HTTP, for tests that need one in hand.
    pub fn issue(&self, scopes: &[&str]) -> String {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        let lifetime = *self.state.lifetime.lock().unwrap();
        sign(&self.state, TokenIssuer::SERVICE, &scopes, "test", lifetime)
    }
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The JWT library accepts only PKCS#8 PEM for EC keys, which is what
/// `openssl req -newkey ec` writes with OpenSSL 3.
fn make_key_and_cert(dir: &Path) -> (EncodingKey, Vec<u8>) {
    let key = dir.join("key.pem");
    let cert = dir.join("cert.pem");
    let der = dir.join("cert.der");
    run_openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "30",
        "-subj",
        "/CN=lank8s-test-issuer",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
    run_openssl(&[
        "x509",
        "-in",
        cert.to_str().unwrap(),
        "-outform",
        "DER",
        "-out",
        der.to_str().unwrap(),
    ]);
    let pem = std::fs::read(&key).expect("read issuer key");
    let key = EncodingKey::from_ec_pem(&pem).expect("parse issuer EC key");
    (key, std::fs::read(&der).expect("read issuer cert DER"))
}

fn run_openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn sign(
    state: &IssuerState,
    service: &str,
    scopes: &[String],
    subject: &str,
    lifetime: Duration,
) -> String {
    let now = unix_now();
    let access: Vec<_> = scopes.iter().filter_map(|s| grant(s)).collect();
    let jti: u128 = rand::thread_rng().r#gen();
    let claims = json!({
        "iss": TokenIssuer::ISSUER,
        "sub": subject,
        "aud": service,
        "exp": now + lifetime.as_secs(),
        // Backdated so that small clock differences never make a fresh token "not yet valid".
        "nbf": now.saturating_sub(5),
        "iat": now,
        "jti": format!("{jti:032x}"),
        "access": access,
    });
    let mut header = Header::new(Algorithm::ES256);
    header.typ = Some("JWT".into());
    header.x5c = Some(vec![state.x5c.clone()]);
    jsonwebtoken::encode(&header, &claims, &state.key).expect("sign JWT")
}

/// Grants every action a scope asks for: `type:name:actions`, where the name may itself contain `:`.
fn grant(scope: &str) -> Option<serde_json::Value> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    let actions: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
    Some(json!({ "type": kind, "name": name, "actions": actions }))
}

async fn handle(State(state): State<Arc<IssuerState>>, req: Request) -> Response {
    let method = req.method().clone();
    let headers = req.headers().clone();
    let query = req.uri().query().unwrap_or("").to_string();
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();

    // GET carries parameters in the query; the OAuth2 POST form carries them in the body.
    let mut params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    if method == Method::POST {
        params.extend(url::form_urlencoded::parse(&body).into_owned());
    }
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let service = param("service");
    // Clients may send several `scope` parameters, each possibly space-separated.
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .filter(|s| !s.is_empty())
        .collect();
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);

    let subject = match authorized(&state, &headers, &params) {
        Some(subject) => subject,
        None => {
            record(&state, &method, &service, &scopes, authorization, false);
            return Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header(header::WWW_AUTHENTICATE, "Basic realm=\"lank8s-test\"")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(
                    r#"{"details":"incorrect username or password"}"#,
                ))
                .unwrap();
        }
    };
    record(&state, &method, &service, &scopes, authorization, true);

    let lifetime = *state.lifetime.lock().unwrap();
    let aud = service
        .clone()
        .unwrap_or_else(|| TokenIssuer::SERVICE.into());
    let token = sign(&state, &aud, &scopes, &subject, lifetime);
    let body = json!({
        "token": token,
        "access_token": token,
        "expires_in": lifetime.as_secs(),
        "issued_at": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// Returns the subject to put in the token, or `None` when credentials are required
/// and missing or wrong.
fn authorized(
    state: &IssuerState,
    headers: &HeaderMap,
    params: &[(String, String)],
) -> Option<String> {
    let credentials = state.credentials.lock().unwrap().clone();
    let Some((user, pass)) = &credentials else {
        return Some("anonymous".into());
    };
    let expected = super::basic_auth_header(user, pass);
    let basic_ok = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == expected);
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let form_ok = param("username") == Some(user) && param("password") == Some(pass);
    (basic_ok || form_ok).then(|| user.clone())
}

fn record(
    state: &IssuerState,
    method: &Method,
    service: &Option<String>,
    scopes: &[String],
    authorization: Option<String>,
    granted: bool,
) {
    state.requests.lock().unwrap().push(TokenRequest {
        method: method.to_string(),
        service: service.clone(),
        scopes: scopes.to_vec(),
        authorization,
        granted,
    });
}
