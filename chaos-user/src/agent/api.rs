//! The agent's HTTP/JSON API (axum). Every error is `{"error": "<one line>"}` with the HTTP status
//! of the exit code `chaos` would give: 400 bad input, 404 no such session, 422 this machine
//! cannot, 500 anything else; 401 a missing or wrong token on TCP.

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, Query, Request, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::{get, post},
};

use super::sessions::{ApiError, SessionInfo, Sessions, StartRequest, no_session};

/// The largest request body the agent reads (a fault file is a few KiB).
pub const MAX_BODY: usize = 1 << 20;
/// Bounds of a counters stream's `every`.
const EVERY_MIN: Duration = Duration::from_millis(100);
const EVERY_MAX: Duration = Duration::from_secs(60);

/// Requests on TCP must carry `Authorization: Bearer <token>`.
#[derive(Clone)]
pub struct Token(pub Arc<String>);

/// The API's routes; with `token`, each request must carry it (TCP).
pub fn router(sessions: Arc<Sessions>, token: Option<Token>) -> Router {
    let router = Router::new()
        .route("/v1/health", get(health))
        .route("/v1/sessions", post(start).get(list))
        .route("/v1/sessions/{id}", get(one).delete(stop))
        .route("/v1/sessions/{id}/stop", post(stop))
        .route("/v1/sessions/{id}/counters", get(counters))
        .fallback(|| async { ApiError::new(404, "no such endpoint: the API is under /v1/sessions and /v1/health") })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(sessions);
    match token {
        Some(token) => router.layer(axum::middleware::from_fn(move |req: Request, next: Next| {
            let token = token.clone();
            async move {
                if bearer_matches(req.headers(), &token.0) {
                    next.run(req).await
                } else {
                    ApiError::new(401, "missing or wrong bearer token: send Authorization: Bearer <the agent's --token-file>").into_response()
                }
            }
        })),
        None => router,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(serde_json::json!({ "error": self.message }))).into_response()
    }
}

/// Compares the bearer token in constant time (for tokens of the right length).
fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")) else {
        return false;
    };
    let (a, b) = (given.trim().as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

async fn health(State(sessions): State<Arc<Sessions>>) -> Json<serde_json::Value> {
    let held = sessions.list().await;
    let injecting = held.iter().filter(|s| s.state == "injecting").count();
    Json(serde_json::json!({ "ok": true, "pid": std::process::id(), "sessions": held.len(), "injecting": injecting }))
}

async fn start(State(sessions): State<Arc<Sessions>>, body: Result<Bytes, BytesRejection>) -> Result<(StatusCode, Json<SessionInfo>), ApiError> {
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(413, format!("the request is larger than {} KiB: a fault file is a few KiB", MAX_BODY / 1024)),
        status => ApiError::new(status.as_u16(), format!("cannot read the request: {}", e.body_text())),
    })?;
    let req: StartRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(400, format!("bad request body: {e}; send {{\"name\": \"...\", \"faults\": \"<fault file TOML>\"}}")))?;
    let req = StartRequest { owner: req.owner.or_else(|| Some("api".into())), ..req };
    let info = sessions.start(req).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

#[derive(serde::Serialize)]
struct List {
    sessions: Vec<SessionInfo>,
}

async fn list(State(sessions): State<Arc<Sessions>>) -> Json<List> {
    Json(List { sessions: sessions.list().await })
}

async fn one(State(sessions): State<Arc<Sessions>>, Path(id): Path<String>) -> Result<Json<SessionInfo>, ApiError> {
    sessions.get(&id).await.map(Json).ok_or_else(|| no_session(&id))
}

async fn stop(State(sessions): State<Arc<Sessions>>, Path(id): Path<String>) -> Result<Json<SessionInfo>, ApiError> {
    sessions.stop(&id).await.map(Json)
}

/// Newline-delimited JSON snapshots of one session (a [`SessionInfo`] each) every `every`
/// (default 1s), the last once it has ended. A client that goes away ends only its stream.
async fn counters(State(sessions): State<Arc<Sessions>>, Path(id): Path<String>, Query(query): Query<HashMap<String, String>>) -> Result<Response, ApiError> {
    if let Some(key) = query.keys().find(|k| *k != "every") {
        return Err(ApiError::new(400, format!("unknown query parameter {key}: the counters stream takes every=DURATION")));
    }
    let every = match query.get("every") {
        None => Duration::from_secs(1),
        Some(s) => humantime::parse_duration(s)
            .ok()
            .filter(|d| (EVERY_MIN..=EVERY_MAX).contains(d))
            .ok_or_else(|| ApiError::new(400, format!("every={s} is not a duration from 100ms to 60s, such as 1s")))?,
    };
    if sessions.get(&id).await.is_none() {
        return Err(no_session(&id));
    }
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(4);
    tokio::spawn(async move {
        loop {
            let Some(info) = sessions.get(&id).await else {
                return;
            };
            let ended = info.state == "ended";
            let line = serde_json::to_string(&info).unwrap_or_default() + "\n";
            // An error here is the client gone: its stream ends, nothing else does.
            if tx.send_data(Bytes::from(line)).await.is_err() || ended {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = sessions.wait_ended(&id) => {}
            }
        }
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::new(body)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_token_must_match_exactly() {
        let mut h = HeaderMap::new();
        assert!(!bearer_matches(&h, "s3cret"));
        h.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert!(bearer_matches(&h, "s3cret"));
        assert!(!bearer_matches(&h, "s3cre"));
        assert!(!bearer_matches(&h, "s3creT"));
        h.insert(header::AUTHORIZATION, "Basic s3cret".parse().unwrap());
        assert!(!bearer_matches(&h, "s3cret"));
    }
}
