//! JSON-RPC messages as the proxy sees them: read just enough to route and measure (kind, id,
//! method, tool name, progress token, `isError`, error code and message) and forward the
//! original text. Nothing here builds a JSON tree of a whole message; the parts are borrowed
//! slices of the text (their JSON text), so an id can be replaced in place without touching
//! anything else. A response in the shape every SDK writes (`{"jsonrpc":"2.0","id":…,"result":…}`)
//! is read from its first bytes only: its result, often most of the message, is not scanned
//! (the client reads it as it would from the server directly).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// What a message is, by the JSON-RPC rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `method` and `id`: wants an answer.
    Request,
    /// `method`, no `id`.
    Notification,
    /// `result` or `error`, no `method`.
    Response,
    /// Anything else (not JSON, not an object, neither of the above).
    Invalid,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

/// One message, its parts borrowed from the text (each part's JSON text).
#[derive(Debug)]
pub struct Msg<'a> {
    pub kind: Kind,
    pub id: Option<&'a str>,
    pub method: Option<Cow<'a, str>>,
    pub params: Option<&'a str>,
    pub result: Option<&'a str>,
    pub error: Option<&'a str>,
}

impl<'a> Msg<'a> {
    /// The id as its JSON text (`1`, `"abc"`), the key requests and responses are matched by.
    pub fn id_text(&self) -> Option<&'a str> {
        self.id
    }

    pub fn method(&self) -> &str {
        self.method.as_deref().unwrap_or("")
    }
}

/// Read one message (an object). Anything unreadable is `Kind::Invalid`.
pub fn peek(text: &str) -> Msg<'_> {
    quick_response(text).unwrap_or_else(|| peek_all(text))
}

/// Read one message, scanning all of it.
pub fn peek_all(text: &str) -> Msg<'_> {
    match serde_json::from_str::<Envelope>(text) {
        Ok(e) => {
            let kind = match (&e.method, &e.id, e.result.is_some() || e.error.is_some()) {
                (Some(_), Some(_), _) => Kind::Request,
                (Some(_), None, _) => Kind::Notification,
                (None, _, true) => Kind::Response,
                _ => Kind::Invalid,
            };
            Msg {
                kind,
                id: e.id.map(RawValue::get),
                method: e.method,
                params: e.params.map(RawValue::get),
                result: e.result.map(RawValue::get),
                error: e.error.map(RawValue::get),
            }
        }
        Err(_) => Msg { kind: Kind::Invalid, id: None, method: None, params: None, result: None, error: None },
    }
}

/// A response that starts `{"jsonrpc":"2.0","id":<number or plain string>,"result":` (any
/// whitespace between) and ends with `}`: its id and result read without scanning the result.
/// Anything else is left to `peek_all`.
fn quick_response(text: &str) -> Option<Msg<'_>> {
    let mut r = text.trim_start().strip_prefix('{')?;
    let key = |r: &mut &str, name: &str| -> Option<()> {
        *r = r.trim_start().strip_prefix('"')?.strip_prefix(name)?.strip_prefix('"')?.trim_start().strip_prefix(':')?;
        *r = r.trim_start();
        Some(())
    };
    key(&mut r, "jsonrpc")?;
    r = r.strip_prefix("\"2.0\"")?.trim_start().strip_prefix(',')?;
    key(&mut r, "id")?;
    let id_len = if let Some(s) = r.strip_prefix('"') {
        let end = s.find(['"', '\\'])?;
        (s.as_bytes()[end] == b'"').then_some(end + 2)?
    } else {
        let n = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
        (n > 0).then_some(n)?
    };
    let (id, rest) = r.split_at(id_len);
    r = rest.trim_start().strip_prefix(',')?;
    key(&mut r, "result")?;
    let result = r.trim_end().strip_suffix('}')?.trim_end();
    (!result.is_empty()).then_some(Msg {
        kind: Kind::Response,
        id: Some(id),
        method: None,
        params: None,
        result: Some(result),
        error: None,
    })
}

/// The elements of a batch (a JSON array of messages), or `None` when `text` is not an array.
pub fn batch(text: &str) -> Option<Vec<&RawValue>> {
    if !text.trim_start().starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<&RawValue>>(text).ok()
}

/// What the proxy reads of a request's params, in one pass over them: the tool a `tools/call`
/// names and its arguments' text, and from `_meta` the protocol version and progress token.
#[derive(Debug, Default)]
pub struct RequestParts<'a> {
    pub tool: Option<Cow<'a, str>>,
    pub arguments: Option<&'a str>,
    pub protocol_version: Option<Cow<'a, str>>,
    pub progress_token: Option<&'a str>,
}

#[derive(Deserialize)]
struct AnyParams<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "_meta")]
    meta: Option<&'a RawValue>,
}

/// A request's params read once (`tool` only for `tools/call`).
pub fn request_parts<'a>(method: &str, params: Option<&'a str>) -> RequestParts<'a> {
    let Some(p) = params.and_then(|p| serde_json::from_str::<AnyParams>(p).ok()) else {
        return RequestParts::default();
    };
    let meta = p.meta.and_then(|m| serde_json::from_str::<Meta>(m.get()).ok());
    let (protocol_version, progress_token) =
        meta.map_or((None, None), |m| (m.protocol_version, m.progress_token.map(RawValue::get)));
    let call = method == "tools/call";
    RequestParts {
        tool: p.name.filter(|_| call),
        arguments: p.arguments.filter(|_| call).map(RawValue::get),
        protocol_version,
        progress_token,
    }
}

#[derive(Deserialize)]
struct WithMeta<'a> {
    #[serde(borrow, default, rename = "_meta")]
    meta: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(borrow, default, rename = "progressToken")]
    progress_token: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "io.modelcontextprotocol/protocolVersion")]
    protocol_version: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "io.modelcontextprotocol/subscriptionId")]
    subscription_id: Option<&'a RawValue>,
}

fn meta(params: Option<&str>) -> Option<Meta<'_>> {
    let w: WithMeta = serde_json::from_str(params?).ok()?;
    serde_json::from_str(w.meta?.get()).ok()
}

/// `params._meta.progressToken` of a request.
pub fn progress_token(params: Option<&str>) -> Option<&str> {
    meta(params)?.progress_token.map(RawValue::get)
}

/// The protocol version a 2026-era request names in `_meta`.
pub fn meta_protocol_version(params: Option<&str>) -> Option<String> {
    meta(params)?.protocol_version.map(Cow::into_owned)
}

/// `params._meta["io.modelcontextprotocol/subscriptionId"]` of a notification.
pub fn subscription_id(params: Option<&str>) -> Option<&str> {
    meta(params)?.subscription_id.map(RawValue::get)
}

#[derive(Deserialize)]
struct ProgressParams<'a> {
    #[serde(borrow, default, rename = "progressToken")]
    token: Option<&'a RawValue>,
}

/// `params.progressToken` of a `notifications/progress`.
pub fn progress_notification_token(params: Option<&str>) -> Option<&str> {
    serde_json::from_str::<ProgressParams>(params?).ok()?.token.map(RawValue::get)
}

#[derive(Deserialize)]
struct CancelParams<'a> {
    #[serde(borrow, default, rename = "requestId")]
    request_id: Option<&'a RawValue>,
}

/// `params.requestId` of a `notifications/cancelled`.
pub fn cancelled_id(params: Option<&str>) -> Option<&str> {
    serde_json::from_str::<CancelParams>(params?).ok()?.request_id.map(RawValue::get)
}

#[derive(Deserialize)]
struct ToolResult<'a> {
    #[serde(default, rename = "isError")]
    is_error: Option<bool>,
    #[serde(borrow, default)]
    content: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize)]
struct TextBlock<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

/// Whether a tool result says `isError: true`. Most results do not, and a result can be large
/// (the whole message was scanned once already), so the text is first searched for an
/// `"isError"` key followed by `true` at any depth; only when one is found is the result read
/// to see whether it is the top-level one.
pub fn is_tool_error(result: Option<&str>) -> bool {
    let Some(r) = result else { return false };
    if let Some(said) = trailing_is_error(r) {
        return said;
    }
    if !may_say_is_error_true(r) {
        return false;
    }
    serde_json::from_str::<ToolResult>(r).ok().is_some_and(|r| r.is_error == Some(true))
}

/// `isError` when it is the result's last member, which is where the SDKs write it (rmcp, the
/// Python and TypeScript SDKs): read from the end, so a large result is not scanned. In valid
/// JSON, text ending `,"isError":false}` (or `{…`, any whitespace) can only be the object's own
/// last member: anywhere else, a string would be left open. `None` when it does not end so.
fn trailing_is_error(result: &str) -> Option<bool> {
    let body = result.trim_end().strip_suffix('}')?.trim_end();
    let (body, said) = match body.strip_suffix("false") {
        Some(b) => (b, false),
        None => (body.strip_suffix("true")?, true),
    };
    let body = body.trim_end().strip_suffix(':')?.trim_end().strip_suffix("\"isError\"")?;
    body.trim_end().ends_with([',', '{']).then_some(said)
}

/// Whether `"isError"` appears as a key (its closing quote not escaped, so not inside a string)
/// with the value `true`. False means no object in `text` has `isError: true`.
fn may_say_is_error_true(text: &str) -> bool {
    const KEY: &str = "\"isError\"";
    // Built once: building a searcher costs about as much as searching a small answer.
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(KEY));
    let mut rest = text;
    while let Some(i) = FINDER.find(rest.as_bytes()) {
        rest = &rest[i + KEY.len()..];
        let after = rest.trim_start();
        if let Some(value) = after.strip_prefix(':')
            && value.trim_start().starts_with("true")
        {
            return true;
        }
    }
    false
}

/// The first text block of a tool result (what a failed call said).
pub fn first_text(result: Option<&str>) -> Option<String> {
    let r: ToolResult = serde_json::from_str(result?).ok()?;
    let first = r.content?.into_iter().next()?;
    serde_json::from_str::<TextBlock>(first.get()).ok()?.text.map(Cow::into_owned)
}

#[derive(Deserialize)]
struct ErrorObject<'a> {
    #[serde(default)]
    code: Option<i64>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

/// A JSON-RPC error's code and message.
pub fn error_info(error: Option<&str>) -> (i64, String) {
    match error.and_then(|e| serde_json::from_str::<ErrorObject>(e).ok()) {
        Some(e) => (e.code.unwrap_or(0), e.message.map(Cow::into_owned).unwrap_or_default()),
        None => (0, String::new()),
    }
}

#[derive(Deserialize)]
struct InitResult<'a> {
    #[serde(borrow, default, rename = "protocolVersion")]
    protocol_version: Option<Cow<'a, str>>,
}

/// `result.protocolVersion` of an `initialize` answer (or `params.protocolVersion` of the request).
pub fn protocol_version(part: Option<&str>) -> Option<String> {
    serde_json::from_str::<InitResult>(part?).ok()?.protocol_version.map(Cow::into_owned)
}

/// What can be told of a message from its two ends alone (one too long to pass, of which only
/// its first and last bytes were kept): whether it asks or answers, its id, and for a request its
/// method and tool. Each part is `None` when the ends do not show it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Glimpse {
    /// `Request` (or `Notification`, without an id) when a `method` or `params` member was seen,
    /// `Response` for `result` or `error`.
    pub kind: Option<Kind>,
    /// The id as its JSON text, as `Msg::id` gives it.
    pub id: Option<String>,
    pub method: Option<String>,
    /// `params.name`, when it comes before anything too long.
    pub tool: Option<String>,
    /// `params._meta` (its JSON text), when one end holds it whole: what a 2026-era request
    /// carries its protocol version in.
    pub meta: Option<String>,
}

/// Read what `head` (a message's first bytes) and `tail` (its last bytes) show of it. The head
/// is read member by member until a value runs past its end; the tail gives an id written last
/// (`…,"id":7}`), which, in valid JSON, can only be the message's own.
pub fn glimpse(head: &str, tail: &str) -> Glimpse {
    let mut g = Glimpse::default();
    glimpse_head(head, &mut g);
    if g.id.is_none() {
        g.id = trailing_id(tail).map(str::to_string);
    }
    if g.meta.is_none() && g.kind == Some(Kind::Request) {
        g.meta = trailing_meta(tail).map(str::to_string);
    }
    if g.kind == Some(Kind::Request) && g.id.is_none() {
        g.kind = Some(Kind::Notification);
    }
    g
}

fn glimpse_head(head: &str, g: &mut Glimpse) -> Option<()> {
    let mut r = head.trim_start().strip_prefix('{')?;
    loop {
        let (key, rest) = plain_string(r.trim_start())?;
        r = rest.trim_start().strip_prefix(':')?.trim_start();
        match key {
            "id" => {
                let end = skip_value(r)?;
                g.id = Some(r[..end].trim_end().to_string());
                r = &r[end..];
            }
            "method" => {
                g.kind.get_or_insert(Kind::Request);
                let (m, rest) = plain_string(r)?;
                g.method = Some(m.to_string());
                r = rest;
            }
            "result" | "error" => {
                g.kind = Some(Kind::Response);
                r = &r[skip_value(r)?..];
            }
            "params" => {
                g.kind.get_or_insert(Kind::Request);
                params_members(r, g);
                r = &r[skip_value(r)?..];
            }
            _ => r = &r[skip_value(r)?..],
        }
        r = r.trim_start();
        r = r.strip_prefix(',')?;
    }
}

/// `name` and `_meta` of a params object, those met whole before any value that runs on.
fn params_members(r: &str, g: &mut Glimpse) -> Option<()> {
    let mut r = r.strip_prefix('{')?;
    loop {
        let (key, rest) = plain_string(r.trim_start())?;
        r = rest.trim_start().strip_prefix(':')?.trim_start();
        let end = skip_value(r)?;
        match key {
            "name" => g.tool = plain_string(r).map(|(n, _)| n.to_string()),
            "_meta" if r.starts_with('{') => g.meta = Some(r[..end].to_string()),
            _ => {}
        }
        r = r[end..].trim_start().strip_prefix(',')?;
    }
}

/// `params._meta` of a request whose params end with it, read from the request's end: the
/// object after the last `"_meta":` must close params, after which the message ends or goes on
/// with top-level members (`…"_meta":{…}},"id":7}`); one more brace would mean it sat deeper.
fn trailing_meta(tail: &str) -> Option<&str> {
    let at = tail.rfind("\"_meta\":")?;
    let value = tail[at + "\"_meta\":".len()..].trim_start();
    if !value.starts_with('{') {
        return None;
    }
    let end = skip_value(value)?;
    let after = value[end..].trim_start().strip_prefix('}')?.trim_start();
    let closes_message = after.strip_prefix('}').is_some_and(|rest| rest.trim().is_empty());
    if !(closes_message || after.starts_with(',')) {
        return None;
    }
    let meta = &value[..end];
    serde_json::from_str::<&RawValue>(meta).ok().map(|_| meta)
}

/// A string without escapes at the start of `r`: its content and what follows it.
fn plain_string(r: &str) -> Option<(&str, &str)> {
    let s = r.strip_prefix('"')?;
    let end = s.find(['"', '\\'])?;
    (s.as_bytes()[end] == b'"').then(|| (&s[..end], &s[end + 1..]))
}

/// The length of the JSON value at the start of `r` (objects, arrays and strings followed to
/// their end; a scalar to the next delimiter), or `None` when `r` ends first.
fn skip_value(r: &str) -> Option<usize> {
    let b = r.as_bytes();
    let (mut depth, mut i, mut in_string) = (0usize, 0usize, false);
    while i < b.len() {
        let c = b[i];
        if in_string {
            match c {
                b'\\' => i += 1,
                b'"' => {
                    in_string = false;
                    if depth == 0 {
                        return Some(i + 1);
                    }
                }
                _ => {}
            }
        } else {
            match c {
                b'"' => in_string = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth == 0 => return Some(i),
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(i + 1);
                    }
                }
                b',' if depth == 0 => return Some(i),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// The id of a message whose last member is `"id"` (its JSON text), read from the message's end.
fn trailing_id(tail: &str) -> Option<&str> {
    let body = tail.trim_end().strip_suffix('}')?.trim_end();
    let value_start = if let Some(inner) = body.strip_suffix('"') {
        let open = inner.rfind('"')?;
        if inner[open + 1..].contains('\\') || inner[..open].ends_with('\\') {
            return None;
        }
        open
    } else {
        body.rfind(|c: char| !(c.is_ascii_digit() || c == '-'))? + 1
    };
    let value = &body[value_start..];
    if value.is_empty() || value == "-" {
        return None;
    }
    let before = body[..value_start].trim_end().strip_suffix(':')?.trim_end().strip_suffix("\"id\"")?;
    before.trim_end().ends_with([',', '{']).then_some(value)
}

/// Where `part` (a slice borrowed from `text`) sits in `text`.
fn span(text: &str, part: &str) -> Option<std::ops::Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
    let end = start + part.len();
    (end <= text.len()).then_some(start..end)
}

/// `text` with `part` (borrowed from it) replaced by `replacement`; every other byte kept.
pub fn splice(text: &str, part: &str, replacement: &str) -> Option<String> {
    let r = span(text, part)?;
    let mut out = String::with_capacity(text.len() + replacement.len());
    out.push_str(&text[..r.start]);
    out.push_str(replacement);
    out.push_str(&text[r.end..]);
    Some(out)
}

/// A JSON-RPC error answer to the request with id `id` (its JSON text).
pub fn error_response(id: &str, code: i64, message: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":{code},"message":{}}}}}"#,
        serde_json::Value::String(message.to_string())
    )
}

/// A JSON string literal.
pub fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// `text` on one line: JSON allows raw newlines only as whitespace between tokens (inside
/// strings they must be escaped), so turning them into spaces changes nothing a reader sees.
pub fn one_line(text: &str) -> Cow<'_, str> {
    if text.contains(['\n', '\r']) { Cow::Owned(text.replace(['\n', '\r'], " ")) } else { Cow::Borrowed(text) }
}

/// JSON-RPC error codes the proxy answers with itself.
pub mod codes {
    pub const INVALID_REQUEST: i64 = -32600;
    pub const INTERNAL_ERROR: i64 = -32603;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_parts() {
        let req = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"},"_meta":{"progressToken":"p1"}}}"#;
        let m = peek(req);
        assert_eq!(m.kind, Kind::Request);
        assert_eq!(m.id_text(), Some("7"));
        assert_eq!(m.method(), "tools/call");
        let parts = request_parts(m.method(), m.params);
        assert_eq!((parts.tool.as_deref(), parts.arguments), (Some("echo"), Some(r#"{"message":"hi"}"#)));
        assert_eq!(progress_token(m.params), Some(r#""p1""#));

        let note = peek(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"a-1"}}"#);
        assert_eq!(note.kind, Kind::Notification);
        assert_eq!(cancelled_id(note.params), Some(r#""a-1""#));

        let ok = peek(
            r#"{"jsonrpc":"2.0","id":"x","result":{"content":[{"type":"text","text":"no such file"}],"isError":true}}"#,
        );
        assert_eq!(ok.kind, Kind::Response);
        assert!(is_tool_error(ok.result));
        assert_eq!(first_text(ok.result).as_deref(), Some("no such file"));

        for (result, is_error) in [
            (r#"{"content":[],"isError":false}"#, false),
            (r#"{"content":[{"type":"text","text":"\"isError\": true"}]}"#, false),
            (r#"{"structuredContent":{"isError":true},"isError":false}"#, false),
            (r#"{"isError" :  true,"content":[]}"#, true),
            (r#"{"content":[{"type":"text","text":"x"}],"isError":true}"#, true),
            // Read from the end when isError is the last member; anything else is searched.
            (r#"{"content":[{"type":"text","text":"a,\"isError\":true}"}],"isError":false}"#, false),
            (r#"{"content":[] , "isError" : true }"#, true),
            (r#"{"isError":true}"#, true),
            (r#"{"structuredContent":{"isError":true}}"#, false),
            (r#"{"content":[],"isError":true,"_meta":{"k":1}}"#, true),
            (r#"{"content":[],"isError":false,"_meta":{"k":1}}"#, false),
            (r#"{"content":[{"type":"text","text":"ends \"isError\":true"}]}"#, false),
        ] {
            let text = format!(r#"{{"jsonrpc":"2.0","id":1,"result":{result}}}"#);
            assert_eq!(is_tool_error(peek(&text).result), is_error, "{result}");
        }

        let err = peek(r#"{"jsonrpc":"2.0","id":3,"error":{"code":-32601,"message":"Method not found"}}"#);
        assert_eq!(err.kind, Kind::Response);
        assert_eq!(error_info(err.error), (-32601, "Method not found".to_string()));
        // An error without an id (the request could not be read) is still a response.
        assert_eq!(peek(r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}}"#).kind, Kind::Response);

        for bad in ["", "not json", "[1,2]", "{}", r#"{"jsonrpc":"2.0","id":1}"#] {
            assert_eq!(peek(bad).kind, Kind::Invalid, "{bad}");
        }
    }

    #[test]
    fn a_requests_params_are_read_in_one_pass() {
        let call = peek(
            r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"_meta":{"progressToken":"t9","io.modelcontextprotocol/protocolVersion":"2026-07-28"},"name":"read_table","arguments":{"limit":5}}}"#,
        );
        let parts = request_parts(call.method(), call.params);
        assert_eq!(parts.tool.as_deref(), Some("read_table"));
        assert_eq!(parts.arguments, Some(r#"{"limit":5}"#));
        assert_eq!(parts.protocol_version.as_deref(), Some("2026-07-28"));
        assert_eq!(parts.progress_token, Some(r#""t9""#));
        // Only a tools/call names a tool; params without _meta have no version or token.
        let prompt = peek(r#"{"jsonrpc":"2.0","id":5,"method":"prompts/get","params":{"name":"p","arguments":{}}}"#);
        let parts = request_parts(prompt.method(), prompt.params);
        assert!(parts.tool.is_none() && parts.arguments.is_none());
        assert!(parts.protocol_version.is_none() && parts.progress_token.is_none());
        assert!(request_parts("tools/call", None).tool.is_none());
        assert!(request_parts("tools/call", Some("[1]")).tool.is_none());
    }

    #[test]
    fn responses_in_the_usual_shape_are_read_from_their_first_bytes() {
        let big = format!(r#"{{"content":[{{"type":"text","text":"{}"}}],"isError":false}}"#, "x".repeat(10_000));
        for text in [
            format!(r#"{{"jsonrpc":"2.0","id":7,"result":{big}}}"#),
            format!(r#"{{ "jsonrpc" : "2.0" , "id" : "a-1" , "result" : {big} }}"#),
            r#"{"jsonrpc":"2.0","id":"x","result":{"isError":true,"content":[]}}"#.to_string(),
        ] {
            let quick = quick_response(&text).expect(&text[..40]);
            let all = peek_all(&text);
            assert_eq!((quick.kind, quick.id, quick.result), (all.kind, all.id, all.result), "{}", &text[..40]);
            assert_eq!(is_tool_error(quick.result), is_tool_error(all.result));
        }
        // Anything else is read whole, and reads the same.
        for text in [
            r#"{"id":1,"jsonrpc":"2.0","result":{}}"#,
            r#"{"jsonrpc":"2.0","id":"a\"b","result":{}}"#,
            r#"{"jsonrpc":"2.0","id":-1,"result":{}}"#,
            r#"{"jsonrpc":"2.0","id":1.5,"result":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"x"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":}"#,
        ] {
            assert!(quick_response(text).is_none(), "{text}");
        }
        assert_eq!(peek(r#"{"jsonrpc":"2.0","id":"a\"b","result":{}}"#).id, Some(r#""a\"b""#));
        assert_eq!(peek(r#"{"jsonrpc":"2.0","id":1,"result":}"#).kind, Kind::Invalid);
    }

    #[test]
    fn splicing_replaces_only_the_part() {
        let text = r#"{ "jsonrpc" : "2.0", "id" : "abc" , "method":"ping","params":{"_meta":{"progressToken":1}}}"#;
        let m = peek(text);
        let out = splice(text, m.id.unwrap(), "42").unwrap();
        assert_eq!(out, r#"{ "jsonrpc" : "2.0", "id" : 42 , "method":"ping","params":{"_meta":{"progressToken":1}}}"#);
        let token = progress_token(m.params).unwrap();
        let out = splice(text, token, r#""t9""#).unwrap();
        assert!(out.ends_with(r#"{"progressToken":"t9"}}}"#), "{out}");
    }

    #[test]
    fn batches_and_lines() {
        let b = batch(r#" [{"jsonrpc":"2.0","id":1,"method":"ping"}, {"jsonrpc":"2.0","method":"x"}]"#).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(peek(b[0].get()).kind, Kind::Request);
        assert!(batch(r#"{"jsonrpc":"2.0"}"#).is_none());
        assert_eq!(one_line("{\n  \"a\": \"b\\n\"\r\n}"), "{   \"a\": \"b\\n\"  }");
        let e = error_response("\"q\"", codes::INTERNAL_ERROR, "upstream \"x\" exited");
        let v: serde_json::Value = serde_json::from_str(&e).unwrap();
        assert_eq!(v["id"], "q");
        assert_eq!(v["error"]["message"], "upstream \"x\" exited");
    }

    #[test]
    fn protocol_versions_from_both_eras() {
        let init = peek(r#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-06-18","capabilities":{}}}"#);
        assert_eq!(protocol_version(init.result).as_deref(), Some("2025-06-18"));
        let modern = peek(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#,
        );
        assert_eq!(meta_protocol_version(modern.params).as_deref(), Some("2026-07-28"));
        let n = peek(
            r#"{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"x","_meta":{"io.modelcontextprotocol/subscriptionId":"listen-1"}}}"#,
        );
        assert_eq!(subscription_id(n.params), Some(r#""listen-1""#));
    }

    #[test]
    fn a_glimpse_of_a_message_from_its_ends() {
        let big = "x".repeat(5_000);
        let answer = format!(
            r#"{{"jsonrpc": "2.0", "id": 12, "result": {{"content": [{{"type": "text", "text": "{big}"}}]}}}}"#
        );
        let (head, tail) = (&answer[..200], &answer[answer.len() - 50..]);
        let g = glimpse(head, tail);
        assert_eq!((g.kind, g.id.as_deref(), g.method), (Some(Kind::Response), Some("12"), None));

        let request = format!(
            r#"{{"jsonrpc":"2.0","id":"r-1","method":"tools/call","params":{{"name":"echo","arguments":{{"s":"{big}"}}}}}}"#
        );
        let g = glimpse(&request[..300], &request[request.len() - 40..]);
        assert_eq!(g.kind, Some(Kind::Request));
        assert_eq!(g.id.as_deref(), Some(r#""r-1""#));
        assert_eq!((g.method.as_deref(), g.tool.as_deref()), (Some("tools/call"), Some("echo")));

        // The id written last is read from the end; members before it that fit are skipped whole.
        let late = format!(r#"{{"result":{{"a":[1,{{"b":"}}"}}],"text":"{big}"}},"jsonrpc":"2.0","id":"q\"x"}}"#);
        let g = glimpse(&late[..100], &late[late.len() - 60..]);
        assert_eq!((g.kind, g.id), (Some(Kind::Response), None), "an escaped id is not guessed at");
        let late = late.replace(r#""q\"x""#, "-7");
        let g = glimpse(&late[..100], &late[late.len() - 60..]);
        assert_eq!((g.kind, g.id.as_deref()), (Some(Kind::Response), Some("-7")));
        let small = r#"{"jsonrpc":"2.0","error":{"code":-1,"message":"m"},"id":4}"#;
        assert_eq!(glimpse(small, small).id.as_deref(), Some("4"));

        // An "id" inside the result is not the message's, at either end.
        let nested = format!(r#"{{"jsonrpc":"2.0","result":{{"text":"{big}","id":9}}}}"#);
        assert_eq!(glimpse(&nested[..80], &nested[nested.len() - 30..]).id, None);
        let nested = format!(r#"{{"jsonrpc":"2.0","method":"notifications/message","params":{{"data":"{big}"}}}}"#);
        let g = glimpse(&nested[..120], &nested[nested.len() - 30..]);
        assert_eq!((g.kind, g.id, g.tool), (Some(Kind::Notification), None, None));

        // `_meta` from either end, when it closes params; not one deeper.
        let meta = r#"{"io.modelcontextprotocol/protocolVersion":"2026-07-28","x":{"y":"}"}}"#;
        let first = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"_meta":{meta},"name":"t","arguments":{{"s":"{big}"}}}}}}"#
        );
        assert_eq!(glimpse(&first[..400], "").meta.as_deref(), Some(meta));
        let last = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t","arguments":{{"s":"{big}"}},"_meta":{meta}}}}}"#
        );
        let g = glimpse(&last[..100], &last[last.len() - 200..]);
        assert_eq!((g.tool.as_deref(), g.meta.as_deref()), (Some("t"), Some(meta)));
        let id_last =
            last.replacen(r#""jsonrpc":"2.0","id":1,"#, "", 1).replace("}}}", r#"}}},"jsonrpc":"2.0","id":1}"#);
        let id_last = &id_last[..id_last.len() - 1];
        let g = glimpse(&id_last[..100], &id_last[id_last.len() - 200..]);
        assert_eq!(
            (g.id.as_deref(), g.meta.as_deref()),
            (Some("1"), Some(meta)),
            "{}",
            &id_last[id_last.len() - 200..]
        );
        let deeper = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t","arguments":{{"s":"{big}","_meta":{meta}}}}}}}"#
        );
        assert_eq!(glimpse(&deeper[..100], &deeper[deeper.len() - 200..]).meta, None);

        // Not JSON at all: nothing is told.
        assert_eq!(glimpse("ab\"c", "}"), Glimpse::default());
    }
}
