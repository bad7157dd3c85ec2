//! HTTP routes: the room API, the WebSocket upgrade and the operations endpoints.

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use axum_extra::headers::authorization::{Authorization, Bearer};
use axum_extra::headers::HeaderMapExt;
use balint_proto::room::{check_name, check_title, Role, Template, TextError, MAX_NAME_CHARS, MAX_TITLE_CHARS};
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::connection::{self, ConnectionLimits, Participant};
use crate::error::AppError;
use crate::limits;
use crate::linger::Peer;
use crate::room::meeting::TitleChange;
use crate::rooms::{self, Lookup, RoomSettings};
use crate::upgrade::{NotAnUpgrade, Serving, WsUpgrade};
use crate::AppState;

/// The body of `POST /api/rooms`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRoom {
    #[serde(default)]
    title: Option<String>,
    #[serde(default = "default_true")]
    ephemeral: bool,
    #[serde(default)]
    template: Template,
    #[serde(default)]
    lobby: bool,
    #[serde(default)]
    sealed: bool,
}

fn default_true() -> bool {
    true
}

/// The answer to `POST /api/rooms`.
#[derive(Debug, Serialize)]
pub struct CreatedRoom {
    #[serde(flatten)]
    links: Links,
    ephemeral: bool,
    template: Template,
    lobby: bool,
    sealed: bool,
}

/// A room's three links, as `POST /api/rooms` and `POST /api/rooms/{room}/links` hand them out.
#[derive(Debug, Serialize)]
pub struct Links {
    room: String,
    leader_token: String,
    invite_token: String,
    observer_token: String,
    leader_url: String,
    invite_url: String,
    observer_url: String,
    expires_at: u64,
}

impl Links {
    /// Signs the leader, invite and observer links of `room` at link `generation`, valid for
    /// the full link lifetime from now, with URLs on this server's public base.
    fn issue(state: &AppState, headers: &HeaderMap, room: &str, generation: u64) -> Self {
        let expires_at = crate::unix_now() + state.config.token_ttl().as_secs();
        let token = |role| state.signer.issue_at(room, role, expires_at, generation);
        let (leader_token, invite_token, observer_token) =
            (token(Role::Leader), token(Role::Member), token(Role::Observer));
        let base = public_base(state, headers);
        let url = |token: &str| format!("{base}/r/{room}#t={token}");
        Links {
            room: room.to_owned(),
            leader_url: url(&leader_token),
            invite_url: url(&invite_token),
            observer_url: url(&observer_token),
            leader_token,
            invite_token,
            observer_token,
            expires_at,
        }
    }
}

/// `POST /api/rooms`: creates a room and hands out its links.
pub async fn create_room(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    let client = client_address(&state, peer.addr, &headers);
    if state.creation_limit.check_key(&client).is_err() {
        state.metrics.refused("room_creation_rate");
        return Err(AppError::bad_request_status(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_rooms_created",
            format!(
                "at most {} rooms per minute may be created from one address",
                state.config.rooms_per_ip_per_minute
            ),
        ));
    }
    if state.rooms.is_full() {
        state.metrics.refused("node_full");
        return Err(AppError::bad_request_status(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_rooms",
            "this server holds as many rooms as it may; try again later",
        ));
    }
    let request: CreateRoom = json_object(&body)?;
    let title = request.title.as_deref().map(validate_title).transpose()?.flatten();
    if request.sealed && title.is_some() {
        // A title in clear would put the case's name on the server.
        return Err(AppError::bad_request(
            "bad_title",
            "a sealed room's title travels sealed: create the room without a title, then set \
             sealed_title with PUT /api/rooms/{room}/title",
        ));
    }
    let room = state
        .rooms
        .set_up(RoomSettings {
            title,
            ephemeral: request.ephemeral,
            template: request.template,
            lobby: request.lobby,
            sealed: request.sealed,
            ..RoomSettings::default()
        })
        .await
        .map_err(|e| AppError::Unavailable(e.to_string()))?;
    tracing::info!(room = room.id(), ephemeral = request.ephemeral, "room created");
    let created = CreatedRoom {
        links: Links::issue(&state, &headers, room.id(), 0),
        ephemeral: request.ephemeral,
        template: request.template,
        lobby: request.lobby,
        sealed: request.sealed,
    };
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// The client's address: the peer's, or with `--trust-forwarded-for` the first address of
/// `X-Forwarded-For`.
fn client_address(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    if state.config.trust_forwarded_for {
        let forwarded = headers
            .get("x-forwarded-for")
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.split(',').next())
            .and_then(|first| first.trim().parse().ok());
        if let Some(address) = forwarded {
            return address;
        }
    }
    peer.ip()
}

/// Whether a browser page from `origin` may open a WebSocket here.
fn origin_allowed(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(axum::http::header::ORIGIN).and_then(|h| h.to_str().ok()) else {
        // Not a browser: origins protect browser users from other sites' pages.
        return true;
    };
    let origin = origin.trim_end_matches('/');
    if !state.config.allowed_origins.is_empty() {
        return state.config.allowed_origins.iter().any(|allowed| allowed.trim_end_matches('/') == origin);
    }
    if let Some(public) = &state.config.public_url {
        if public.trim_end_matches('/') == origin {
            return true;
        }
    }
    // Same host as the request: the page was served by this server.
    let host = headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    origin.split_once("://").is_some_and(|(_, rest)| rest == host)
}

/// Parses a request body that must be a JSON object (an empty body counts as `{}`). Arrays,
/// which serde would take as the struct's fields in order, and other JSON values are refused.
pub fn json_object<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, AppError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        None => serde_json::from_str("{}").map_err(|e| AppError::bad_request("bad_json", describe_json_error(&e))),
        Some(b'{') => {
            serde_json::from_slice(body).map_err(|e| AppError::bad_request("bad_json", describe_json_error(&e)))
        }
        Some(_) => Err(AppError::bad_request("bad_json", "the request body must be a JSON object")),
    }
}

/// Says which field was wrong without echoing the body, which may hold a title.
fn describe_json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    // serde's messages name fields and expected types, never values, except for unknown
    // variants where they quote the offending string; keep only the part before the quote.
    let cut = text.find(" `").map_or(text.as_str(), |i| &text[..i]);
    let cut = cut.split(" at line ").next().unwrap_or(cut);
    format!("invalid request body: {cut}")
}

fn public_base(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(base) = &state.config.public_url {
        return base.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b)))
        .map(str::to_owned)
        .unwrap_or_else(|| state.config.bind.to_string());
    format!("http://{host}")
}

/// Query parameters of the WebSocket endpoint.
#[derive(Debug, Deserialize)]
pub struct JoinParams {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    name: Option<String>,
    /// `1` from a client of sealed rooms; anything else (or nothing) is a plain client.
    #[serde(default)]
    sealed: Option<String>,
}

/// `GET /ws/{room}?token=&name=`: checks the token, then the room, then upgrades.
///
/// The link's MAC is checked first: a request without a valid link touches no store (neither
/// Redis nor the disk). The socket caps come next, so a refused connection costs nothing.
pub async fn join_room(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(room_id): Path<String>,
    Query(params): Query<JoinParams>,
    headers: HeaderMap,
    upgrade: Result<WsUpgrade, NotAnUpgrade>,
) -> Result<Response, AppError> {
    let token = params.token.as_deref().unwrap_or_default();
    if !rooms::is_room_id(&room_id) {
        return Err(AppError::NotFound);
    }
    let grant =
        state.signer.verify(token, &room_id, crate::unix_now()).inspect_err(|_| state.metrics.refused("bad_token"))?;
    if !origin_allowed(&state, &headers) {
        state.metrics.refused("origin");
        return Err(AppError::bad_request_status(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this page's origin may not open a room here",
        ));
    }
    let sealed = params.sealed.as_deref() == Some("1");
    let name = validate_name(params.name.as_deref(), sealed)?;
    let permit = state.sockets.acquire(client_address(&state, peer.addr, &headers)).map_err(|full| {
        state.metrics.refused(full.reason());
        AppError::Busy(full.message())
    })?;
    let room = match state.rooms.lookup(&room_id).await.map_err(unavailable)? {
        Lookup::Live(room) => room,
        Lookup::Ended => return Err(AppError::Gone),
        Lookup::Unknown => return Err(unknown_room(&state)),
    };
    let upgrade = upgrade.map_err(|_| AppError::UpgradeRequired)?;
    let conn = state.rooms.next_conn_id();
    let participant = Participant { role: grant.role, link_generation: grant.generation, name, sealed };
    let conn_limits = ConnectionLimits {
        max_frame_bytes: state.config.max_frame_bytes,
        write_timeout: std::time::Duration::from_millis(state.config.write_timeout_ms),
        messages_per_sec: state.config.messages_per_sec,
        bytes_per_sec: state.config.bytes_per_sec,
        stall_timeout: std::time::Duration::from_secs(state.config.stall_timeout_secs),
        flood_timeout: std::time::Duration::from_secs(state.config.flood_timeout_secs),
    };
    let metrics = state.metrics.clone();
    let rooms = state.rooms.clone();
    let beat = state.keepalive.beat(conn);
    // The transport refuses a frame over the limit from its header, without reading it; the
    // connection closes with 1009, and the listener drains the rest (`linger.rs`).
    let transport_limit = state.config.max_frame_bytes.max(1);
    let serving = Serving {
        conn,
        // The transport zero-fills its whole read buffer, and its write buffer keeps the most
        // it ever held: both are resident memory for every connection, idle or not.
        config: WebSocketConfig::default()
            .read_buffer_size(limits::WS_READ_BUFFER_BYTES)
            .write_buffer_size(limits::WS_WRITE_BUFFER_BYTES)
            .max_message_size(Some(transport_limit))
            .max_frame_size(Some(transport_limit)),
        thread: state.room_threads.for_room(&room_id).cloned(),
        handoff: peer.handoff,
        tracker: state.tracker.clone(),
    };
    // No span per connection (one costs about 300 bytes for the connection's life): every log
    // line of the connection names its room and connection ids itself, and nothing else.
    Ok(upgrade.serve(serving, move |socket| {
        let clock = move || rooms.now_ms();
        let outlet = socket.outlet();
        connection::serve(socket, room, outlet, participant, clock, conn_limits, metrics, beat)
            // Counted against the caps until the connection ends.
            .map(move |()| drop(permit))
    }))
}

/// Checks a display name: 1 to 64 characters, no control characters. A stock Yjs client that
/// sends none is called "Guest". A client of sealed rooms sends none: its name travels sealed
/// (`set_sealed_name`), and one in the URL is refused rather than taken to the server.
fn validate_name(name: Option<&str>, sealed: bool) -> Result<String, AppError> {
    match (name, sealed) {
        (None, true) => Ok(String::new()),
        (Some(_), true) => Err(AppError::bad_request(
            "bad_name",
            "a client of sealed rooms sends its name sealed (set_sealed_name), never in the URL",
        )),
        (None, false) => Ok("Guest".to_owned()),
        (Some(name), false) => match check_name(name) {
            Ok(name) => Ok(name.to_owned()),
            Err(TextError::Control) => {
                Err(AppError::bad_request("bad_name", "the name must not contain control characters"))
            }
            Err(_) => {
                Err(AppError::bad_request("bad_name", format!("the name must be 1 to {MAX_NAME_CHARS} characters")))
            }
        },
    }
}

/// Checks a title in clear; an empty one is no title.
fn validate_title(title: &str) -> Result<Option<String>, AppError> {
    match check_title(title) {
        Ok(title) => Ok(title.map(str::to_owned)),
        Err(TextError::Control) => {
            Err(AppError::bad_request("bad_title", "the title must not contain control characters"))
        }
        Err(_) => {
            Err(AppError::bad_request("bad_title", format!("the title must be at most {MAX_TITLE_CHARS} characters")))
        }
    }
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: the node can serve meetings: its room backend (Redis, when configured)
/// answers, within a short deadline so that a load balancer's check never hangs. The board
/// store (persistent rooms only) is checked too and reported in the body, but does not make
/// the node unready: it is shared by every node, so a load balancer would take them all out
/// together and stop the ephemeral meetings, which never need it.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let backend =
        matches!(tokio::time::timeout(limits::READINESS_TIMEOUT, state.rooms.check_backend()).await, Ok(Ok(())));
    let store =
        matches!(tokio::time::timeout(limits::READINESS_TIMEOUT, state.rooms.check_board_store()).await, Ok(Ok(())));
    let name = if state.config.uses_redis() { "redis" } else { "embedded" };
    let body = serde_json::json!({
        "ready": backend,
        "backend": { "kind": name, "ok": backend },
        "store": { "kind": state.config.board_store_kind().name(), "ok": store },
    });
    if !backend || !store {
        tracing::warn!(backend, store, "not ready, or persistent rooms cannot be loaded or saved");
    }
    let status = if backend { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body))
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.metrics.encode(),
    )
}

/// `GET /api/rooms/{room}/presence` with the leader token as a Bearer header (or `?token=`):
/// the members and their status, the same on every node.
pub async fn presence(
    State(state): State<AppState>,
    Path(room_id): Path<String>,
    Query(params): Query<JoinParams>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let header = bearer(&headers);
    let token = header.as_ref().map(|h| h.token()).or(params.token.as_deref()).unwrap_or_default();
    let grant = state.signer.verify(token, &room_id, crate::unix_now())?;
    if grant.role != Role::Leader {
        return Err(AppError::Forbidden);
    }
    let room = match state.rooms.lookup(&room_id).await.map_err(unavailable)? {
        Lookup::Live(room) => room,
        Lookup::Ended => return Err(AppError::Gone),
        Lookup::Unknown => return Err(unknown_room(&state)),
    };
    let view = room.leader_view();
    Ok(Json(serde_json::json!({ "version": view.version, "members": view.members, "waiting": view.waiting }))
        .into_response())
}

/// The `Authorization: Bearer` header, parsed by `axum-extra`'s typed headers (the scheme in
/// any case, as RFC 9110 has it). `None` when there is none or it is not a Bearer one: the
/// handlers then answer as for a missing token (401 `missing_token`), which the typed-header
/// extractor would not (it refuses a malformed header with 400 before the handler runs).
pub fn bearer(headers: &HeaderMap) -> Option<Authorization<Bearer>> {
    headers.typed_get()
}

/// Checks a leader's Bearer token for `room_id` and finds the room.
async fn leader_room(
    state: &AppState,
    room_id: &str,
    headers: &HeaderMap,
) -> Result<Arc<crate::rooms::Room>, AppError> {
    if !rooms::is_room_id(room_id) {
        return Err(AppError::NotFound);
    }
    let header = bearer(headers);
    let token = header.as_ref().map(|h| h.token()).unwrap_or_default();
    let grant = state.signer.verify(token, room_id, crate::unix_now())?;
    if grant.role != Role::Leader {
        return Err(AppError::Forbidden);
    }
    match state.rooms.lookup(room_id).await.map_err(unavailable)? {
        Lookup::Live(room) => Ok(room),
        Lookup::Ended => Err(AppError::Gone),
        Lookup::Unknown => Err(unknown_room(state)),
    }
}

/// `GET /api/rooms/{room}/export.md` with the leader token as a Bearer header: the notes and
/// the observation cards, grouped by phase. Ephemeral rooms keep nothing to export.
pub async fn export(
    State(state): State<AppState>,
    Path(room_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let room = leader_room(&state, &room_id, &headers).await?;
    if room.is_ephemeral() {
        return Err(AppError::bad_request_status(
            StatusCode::CONFLICT,
            "ephemeral",
            "this meeting is ephemeral: nothing of it is kept, so there is nothing to export",
        ));
    }
    if room.is_sealed() {
        return Err(AppError::bad_request_status(
            StatusCode::CONFLICT,
            "sealed",
            "this room is sealed: the server cannot read its board, so only a member's browser can export it",
        ));
    }
    tracing::info!(room = %room_id, "board exported");
    Ok(([(axum::http::header::CONTENT_TYPE, "text/markdown; charset=utf-8")], room.export_markdown()).into_response())
}

/// `DELETE /api/rooms/{room}` with the leader token as a Bearer header: ends the meeting for
/// everyone, wipes it and deletes its stored board for good.
pub async fn delete_room(
    State(state): State<AppState>,
    Path(room_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let room = leader_room(&state, &room_id, &headers).await?;
    state.rooms.delete(&room).await.map_err(|e| AppError::Unavailable(e.to_string()))?;
    tracing::info!(room = %room_id, "room deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The body of `POST /api/rooms/{room}/links`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueLinks {
    /// Raise the room's link generation first, so that invite and observer links issued
    /// before no longer let newcomers in.
    #[serde(default)]
    renew: bool,
}

/// The answer to `POST /api/rooms/{room}/links`.
#[derive(Debug, Serialize)]
pub struct IssuedLinks {
    #[serde(flatten)]
    links: Links,
    generation: u64,
}

/// `POST /api/rooms/{room}/links` with the leader token as a Bearer header and a JSON object
/// `{"renew": bool?}`: a fresh set of links, valid for the full link lifetime, of the room's
/// current link generation; with `renew`, of a new generation, and older invite and observer
/// links no longer let newcomers in (members present carry on).
pub async fn issue_links(
    State(state): State<AppState>,
    Path(room_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    let room = leader_room(&state, &room_id, &headers).await?;
    let request: IssueLinks = json_object(&body)?;
    let generation = if request.renew {
        room.renew_links()
            .await
            .ok_or_else(|| AppError::Unavailable("the link generation could not be written".to_owned()))?
    } else {
        room.link_generation()
    };
    tracing::info!(room = %room_id, generation, renewed = request.renew, "links issued");
    Ok(Json(IssuedLinks { links: Links::issue(&state, &headers, room.id(), generation), generation }).into_response())
}

/// The body of `PUT /api/rooms/{room}/title`: `title` for a plain room, `sealed_title` for a
/// sealed one; `null` clears it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetTitle {
    #[serde(default, deserialize_with = "present")]
    title: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    sealed_title: Option<Option<String>>,
}

/// A field that is present (possibly `null`) reads as `Some`.
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

/// `PUT /api/rooms/{room}/title` with the leader token as a Bearer header: sets the title that
/// every member sees. A sealed room's title is sealed by the leader's client
/// (`docs/PROTOCOL.md` §13): the creating browser sets it right after `POST /api/rooms`, since
/// the room id it is sealed with is known only then. Answers 204.
pub async fn set_title(
    State(state): State<AppState>,
    Path(room_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    let room = leader_room(&state, &room_id, &headers).await?;
    let request: SetTitle = json_object(&body)?;
    let change = match (request.title, request.sealed_title) {
        (Some(title), None) => TitleChange::Clear(title.as_deref().map(validate_title).transpose()?.flatten()),
        (None, Some(sealed)) => TitleChange::Sealed(sealed),
        _ => return Err(AppError::bad_request("bad_title", "give exactly one of title and sealed_title")),
    };
    match room.set_title(change).await {
        Ok(true) => {
            tracing::info!(room = %room_id, "title set");
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Ok(false) => Err(AppError::Unavailable("the title could not be written".to_owned())),
        Err(e) => Err(AppError::bad_request("bad_title", e.to_string())),
    }
}

/// The answer for a room that a valid link names but that nothing is known of: no record, no
/// stored board, no tombstone.
///
/// A single node without Redis keeps every persistent room in its board store, so such a
/// room was ephemeral and its meeting ended when the node restarted: 410. With Redis, a
/// record may have been lost (Redis restarted, keeping nothing) while no node held the
/// room: that is not known to be an end, so the answer says so (404 `unknown_room`).
fn unknown_room(state: &AppState) -> AppError {
    if !state.config.uses_redis() {
        AppError::Gone
    } else {
        AppError::UnknownRoom
    }
}

/// A backend failure as answered to clients: a board that cannot be read (or a board store
/// that does not answer) is said plainly, and the board stays stored as it is; anything else
/// is "briefly unavailable".
fn unavailable(e: crate::backend::BackendError) -> AppError {
    if let crate::backend::BackendError::Postgres(detail) = &e {
        // The detail names the failure only, never the connection string.
        tracing::warn!(error = %detail, "the board store did not answer");
    }
    match e {
        crate::backend::BackendError::Corrupt
        | crate::backend::BackendError::Io(_)
        | crate::backend::BackendError::Postgres(_) => AppError::Unreadable,
        other => AppError::Unavailable(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{header, HeaderValue, Method, Request};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::Config;

    /// A server in memory with one persistent room; its leader and member links.
    async fn server() -> (tempfile::TempDir, axum::Router, String, String, String) {
        let data = tempfile::tempdir().unwrap();
        let state = AppState::new(Config::for_tests(data.path().to_owned())).await.unwrap();
        let settings = RoomSettings {
            title: None,
            ephemeral: false,
            template: Template::Balint,
            lobby: false,
            sealed: false,
            link_generation: 0,
            sealed_title: None,
            controls: Default::default(),
        };
        let room = state.rooms.create(settings).await.unwrap().id().to_owned();
        let expires = crate::unix_now() + 3600;
        let leader = state.signer.issue(&room, Role::Leader, expires);
        let member = state.signer.issue(&room, Role::Member, expires);
        (data, crate::app(state), room, leader, member)
    }

    /// The status and JSON body of `method uri` with `authorization` as the header, if any.
    async fn ask(
        app: &axum::Router,
        method: Method,
        uri: &str,
        authorization: Option<HeaderValue>,
    ) -> (StatusCode, serde_json::Value) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let request = request.header(header::CONTENT_TYPE, "application/json").body(Body::from("{}")).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
    }

    fn value(text: &str) -> Option<HeaderValue> {
        Some(HeaderValue::from_str(text).unwrap())
    }

    #[tokio::test]
    async fn a_missing_or_malformed_bearer_header_is_answered_as_a_missing_token() {
        let (_data, app, room, leader, _member) = server().await;
        for (method, path) in [
            (Method::GET, format!("/api/rooms/{room}/export.md")),
            (Method::GET, format!("/api/rooms/{room}/presence")),
            (Method::POST, format!("/api/rooms/{room}/links")),
            (Method::DELETE, format!("/api/rooms/{room}")),
        ] {
            let missing = ask(&app, method.clone(), &path, None).await;
            assert_eq!(missing.0, StatusCode::UNAUTHORIZED, "{path}");
            assert_eq!(missing.1["error"], "missing_token", "{path}");
            for malformed in [
                value(&format!("Basic {leader}")),
                value(&format!("Bearer{leader}")),
                value("Bearer"),
                value("Bearer "),
                value(""),
                Some(HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap()),
            ] {
                assert_eq!(ask(&app, method.clone(), &path, malformed.clone()).await, missing, "{path} {malformed:?}");
            }
        }
    }

    #[tokio::test]
    async fn a_bearer_token_is_checked_as_before() {
        let (_data, app, room, leader, member) = server().await;
        let path = format!("/api/rooms/{room}/export.md");
        let (status, body) = ask(&app, Method::GET, &path, value("Bearer not-a-token")).await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_token")));
        let (status, body) = ask(&app, Method::GET, &path, value(&format!("Bearer {member}"))).await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")));
        // The leader's token, with the scheme in any case (RFC 9110) and extra spaces before it.
        for header in [format!("Bearer {leader}"), format!("bearer {leader}"), format!("Bearer   {leader}")] {
            assert_eq!(ask(&app, Method::GET, &path, value(&header)).await.0, StatusCode::OK, "{header}");
        }
        // Presence also takes the token from the query string; a header comes first.
        let presence = format!("/api/rooms/{room}/presence");
        let (status, body) = ask(&app, Method::GET, &format!("{presence}?token={leader}"), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["members"], serde_json::json!([]));
        let (status, body) =
            ask(&app, Method::GET, &format!("{presence}?token={leader}"), value(&format!("Bearer {member}"))).await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")));
    }

    /// The status and JSON body of `method uri` with `body` and `authorization`, if any.
    async fn send(
        app: &axum::Router,
        method: Method,
        uri: &str,
        authorization: Option<HeaderValue>,
        body: serde_json::Value,
    ) -> (StatusCode, serde_json::Value) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let request = request
            .header(header::CONTENT_TYPE, "application/json")
            .extension(ConnectInfo(Peer::at(SocketAddr::from(([127, 0, 0, 1], 9)))))
            .body(Body::from(body.to_string()))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
    }

    fn a_sealed_value() -> String {
        balint_proto::sealed::encode_value(&balint_proto::sealed::Sealed {
            seq: 0,
            kind: balint_proto::sealed::Kind::Title,
            nonce: [9; balint_proto::sealed::NONCE_LEN],
            ciphertext: vec![9; 30].into(),
        })
    }

    #[tokio::test]
    async fn a_sealed_rooms_title_is_refused_in_clear_and_set_sealed_by_a_leader() {
        let (_data, app, _room, _leader, _member) = server().await;
        let (status, body) =
            send(&app, Method::POST, "/api/rooms", None, serde_json::json!({"sealed": true, "title": "Case"})).await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_title")));
        assert!(!body.to_string().contains("Case"), "the answer does not echo the title: {body}");

        let (status, created) = send(&app, Method::POST, "/api/rooms", None, serde_json::json!({"sealed": true})).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let room = created["room"].as_str().unwrap();
        let leader = value(&format!("Bearer {}", created["leader_token"].as_str().unwrap()));
        let member = value(&format!("Bearer {}", created["invite_token"].as_str().unwrap()));
        let path = format!("/api/rooms/{room}/title");
        let title = a_sealed_value();
        for (body, error) in [
            (serde_json::json!({"title": "Case"}), "bad_title"),
            (serde_json::json!({"sealed_title": "Case in clear"}), "bad_title"),
            (serde_json::json!({}), "bad_title"),
            (serde_json::json!({"title": null, "sealed_title": title}), "bad_title"),
            (serde_json::json!({"sealed_title": title, "x": 1}), "bad_json"),
        ] {
            let (status, answer) = send(&app, Method::PUT, &path, leader.clone(), body.clone()).await;
            assert_eq!((status, answer["error"].as_str()), (StatusCode::BAD_REQUEST, Some(error)), "{body}");
        }
        let (status, _) = send(&app, Method::PUT, &path, member, serde_json::json!({"sealed_title": title})).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) =
            send(&app, Method::PUT, &path, leader.clone(), serde_json::json!({"sealed_title": title})).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _) = send(&app, Method::PUT, &path, leader, serde_json::json!({"sealed_title": null})).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }

    #[tokio::test]
    async fn a_plain_rooms_title_can_be_changed_by_a_leader() {
        let (_data, app, room, leader, _member) = server().await;
        let path = format!("/api/rooms/{room}/title");
        let leader = value(&format!("Bearer {leader}"));
        let (status, body) =
            send(&app, Method::PUT, &path, leader.clone(), serde_json::json!({"sealed_title": a_sealed_value()})).await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_title")));
        let (status, body) =
            send(&app, Method::PUT, &path, leader.clone(), serde_json::json!({"title": "a\u{7}b"})).await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_title")));
        let (status, _) = send(&app, Method::PUT, &path, leader, serde_json::json!({"title": "Tuesday group"})).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
}
