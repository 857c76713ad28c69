//! One notification → one mail: the template context, the three templates (subject, plain
//! text, HTML) and the MIME message.
//!
//! Everything taken from the notification is untrusted (any room member names rooms and writes
//! messages, anyone can pick a display name). So: values are cut and stripped of control and
//! bidi-override characters before any template sees them; the HTML template is rendered with
//! HTML auto-escaping; the subject loses every control character after rendering (no header
//! injection, whatever an operator's template does); values put into links are
//! percent-encoded. lettre then encodes headers (RFC 2047) and bodies (quoted-printable or
//! base64), so the message on the wire is 7-bit ASCII.

use std::path::Path;

use herald_core::{Device, Notification};
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::Address;
use minijinja::{Environment, UndefinedBehavior, Value};
use serde::Serialize;

/// The shipped templates: (name, source).
const SHIPPED: [(&str, &str); 3] = [
    (SUBJECT, include_str!("templates/subject.txt")),
    (TEXT, include_str!("templates/body.txt")),
    (HTML, include_str!("templates/body.html")),
];
const SUBJECT: &str = "subject.txt";
const TEXT: &str = "body.txt";
const HTML: &str = "body.html";

/// Names and room names are cut to this many characters (as for every other backend).
const MAX_NAME_CHARS: usize = 1024;
/// The subject line is cut to this many characters.
const MAX_SUBJECT_CHARS: usize = 250;
/// Template work per render (minijinja's fuel): a loop an operator's template runs by mistake
/// fails the render instead of holding a delivery.
const TEMPLATE_FUEL: u64 = 100_000;

/// What the templates see. Every key is always present (`none` when unknown), so that a
/// template naming a key that does not exist fails when it is loaded, not in production.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Context {
    /// The sender's display name, else their Matrix id, else "Someone".
    pub(crate) sender: String,
    /// The sender's Matrix id.
    pub(crate) sender_id: Option<String>,
    /// The room's name, else its alias; none for an unnamed (direct) chat.
    pub(crate) room: Option<String>,
    /// The room id.
    pub(crate) room_id: Option<String>,
    /// The event id.
    pub(crate) event_id: Option<String>,
    /// `message`, `notice`, `emote`, `encrypted`, `media`, `call`, `invite` or `other`.
    pub(crate) kind: &'static str,
    /// For `media`: `image`, `video`, `audio`, `file`, `sticker` or `location`.
    pub(crate) media: Option<&'static str>,
    /// The message text (`m.text`, `m.notice`, `m.emote` only; none when hidden).
    pub(crate) body: Option<String>,
    /// A link into a Matrix client (`client_url`).
    pub(crate) link: Option<String>,
    /// The unsubscribe link (`unsubscribe_url`).
    pub(crate) unsubscribe_url: Option<String>,
    /// Unread messages.
    pub(crate) unread: u64,
    /// Missed calls.
    pub(crate) missed_calls: u64,
}

/// A `{placeholder}` URL template (`client_url`, `unsubscribe_url`), checked at start-up.
#[derive(Debug, Clone)]
pub(crate) struct UrlTemplate {
    text: String,
}

impl UrlTemplate {
    /// Checks `text`: an `https:` or `http:` URL (or one of `schemes`), with only `allowed`
    /// placeholders.
    pub(crate) fn new(text: &str, allowed: &[&str], schemes: &[&str]) -> Result<Self, String> {
        let lower = text.to_ascii_lowercase();
        if !schemes.iter().any(|s| lower.starts_with(s)) {
            return Err(format!("`{text}` must start with one of {}", schemes.join(", ")));
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>')) {
            return Err(format!("`{text}` has spaces, control characters or angle brackets"));
        }
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            let close = rest[open..].find('}').ok_or_else(|| format!("`{text}`: unclosed {{"))?;
            let name = &rest[open + 1..open + close];
            if !allowed.contains(&name) {
                return Err(format!(
                    "`{text}`: unknown placeholder {{{name}}} (known: {})",
                    allowed.iter().map(|a| format!("{{{a}}}")).collect::<Vec<_>>().join(", ")
                ));
            }
            rest = &rest[open + close + 1..];
        }
        Ok(UrlTemplate { text: text.to_owned() })
    }

    /// The URL with each placeholder replaced by its percent-encoded value; `None` when a
    /// placeholder it uses has no value.
    pub(crate) fn expand(&self, values: &[(&str, Option<&str>)]) -> Option<String> {
        let mut out = String::with_capacity(self.text.len() + 64);
        let mut rest = self.text.as_str();
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let close = rest[open..].find('}')?;
            let name = &rest[open + 1..open + close];
            let value = values.iter().find(|(n, _)| *n == name).and_then(|(_, v)| *v)?;
            percent_encode(value, &mut out);
            rest = &rest[open + close + 1..];
        }
        out.push_str(rest);
        Some(out)
    }
}

/// Percent-encodes everything but unreserved characters and `!$:@` (which Matrix ids use and
/// which mean nothing special in a path, query or fragment). `+`, `&`, `=`, `#`, `/`, `?`, quotes
/// and everything non-ASCII are encoded, so a value cannot change the URL's structure.
fn percent_encode(value: &str, out: &mut String) {
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$:@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// How the context is built for one app.
#[derive(Debug, Clone)]
pub(crate) struct ContextOptions {
    /// Whether the app puts message text into mails at all.
    pub(crate) include_content: bool,
    /// Longer message text is cut.
    pub(crate) max_body_chars: usize,
    /// `client_url`.
    pub(crate) client_url: Option<UrlTemplate>,
}

/// The template context of `notification` for `device`; `unsubscribe_url` is the expanded
/// link for this recipient.
pub(crate) fn context(
    n: &Notification,
    device: &Device,
    options: &ContextOptions,
    unsubscribe_url: Option<String>,
) -> Context {
    let content = n.content.as_ref();
    let msgtype = content.and_then(|c| c.str("msgtype"));
    let (kind, media) = match (n.event_type.as_deref(), msgtype.as_deref()) {
        (Some("m.room.message"), Some("m.text")) => ("message", None),
        (Some("m.room.message"), Some("m.notice")) => ("notice", None),
        (Some("m.room.message"), Some("m.emote")) => ("emote", None),
        (Some("m.room.message"), Some("m.image")) => ("media", Some("image")),
        (Some("m.room.message"), Some("m.video")) => ("media", Some("video")),
        (Some("m.room.message"), Some("m.audio")) => ("media", Some("audio")),
        (Some("m.room.message"), Some("m.file")) => ("media", Some("file")),
        (Some("m.room.message"), Some("m.location")) => ("media", Some("location")),
        // Another or no msgtype: a message, whose text is not shown.
        (Some("m.room.message"), _) => ("message", None),
        (Some("m.sticker"), _) => ("media", Some("sticker")),
        (Some("m.room.encrypted"), _) => ("encrypted", None),
        (Some(t), _) if t.starts_with("m.call.") || t.ends_with("rtc.notification") => {
            ("call", None)
        }
        (Some("m.room.member"), _)
            if n.membership.as_deref() == Some("invite") && n.user_is_target != Some(false) =>
        {
            ("invite", None)
        }
        _ => ("other", None),
    };
    // The pusher may ask for less (no text), never for more than the app allows.
    let show_text = options.include_content && device.data.bool("include_content").unwrap_or(true);
    let body = match kind {
        // Only these carry text meant to be read; other message types show a neutral line.
        "message" | "notice" | "emote"
            if show_text
                && matches!(msgtype.as_deref(), Some("m.text" | "m.notice" | "m.emote")) =>
        {
            content
                .and_then(|c| c.str("body"))
                .map(|b| clean_text(&b, options.max_body_chars))
                .filter(|b| !b.trim().is_empty())
        }
        _ => None,
    };
    let name = |s: Option<&String>| s.map(|s| clean_name(s)).filter(|s| !s.is_empty());
    let sender_id = name(n.sender.as_ref());
    let sender = name(n.sender_display_name.as_ref())
        .or_else(|| sender_id.clone())
        .unwrap_or_else(|| "Someone".to_owned());
    let room = name(n.room_name.as_ref()).or_else(|| name(n.room_alias.as_ref()));
    let link = options.client_url.as_ref().and_then(|t| {
        t.expand(&[("room_id", n.room_id.as_deref()), ("event_id", n.event_id.as_deref())])
    });
    Context {
        sender,
        sender_id,
        room,
        room_id: name(n.room_id.as_ref()),
        event_id: name(n.event_id.as_ref()),
        kind,
        media,
        body,
        link,
        unsubscribe_url,
        unread: n.counts.unread.unwrap_or(0),
        missed_calls: n.counts.missed_calls.unwrap_or(0),
    }
}

/// Bidi embedding, override and isolate controls: a name could reverse the text around it.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// A name or room name: one line, no control or bidi-override characters, cut.
fn clean_name(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_NAME_CHARS));
    for c in s.chars().filter(|c| !is_bidi_control(*c)) {
        let c = if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') { ' ' } else { c };
        out.push(c);
    }
    cut(collapse_spaces(&out).trim(), MAX_NAME_CHARS)
}

/// Message text: line breaks kept (as `\n`), other control characters dropped, cut.
fn clean_text(s: &str, max_chars: usize) -> String {
    let s = s.replace("\r\n", "\n");
    let kept: String = s
        .chars()
        .filter_map(|c| match c {
            '\n' | '\r' | '\u{2028}' | '\u{2029}' => Some('\n'),
            '\t' => Some(' '),
            c if c.is_control() || is_bidi_control(c) => None,
            c => Some(c),
        })
        .collect();
    cut(kept.trim_end(), max_chars)
}

/// Runs of whitespace as one space.
fn collapse_spaces(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for c in s.chars() {
        if c.is_whitespace() {
            if !space {
                out.push(' ');
            }
            space = true;
        } else {
            out.push(c);
            space = false;
        }
    }
    out
}

/// `s` cut to `max` characters, ending in `…` when cut.
fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max.saturating_sub(1)) {
        Some((at, _)) if s.chars().count() > max => format!("{}…", s[..at].trim_end()),
        _ => s.to_owned(),
    }
}

/// A rendered mail, before MIME.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rendered {
    /// The subject: one line, no control characters.
    pub(crate) subject: String,
    /// The plain-text part.
    pub(crate) text: String,
    /// The HTML part.
    pub(crate) html: String,
}

/// The three templates, compiled once per app.
pub(crate) struct Templates {
    env: Environment<'static>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates").finish_non_exhaustive()
    }
}

impl Templates {
    /// The shipped templates, each replaced by the file of the same name in `dir` when there is
    /// one. Files in `dir` can also be `{% include %}`d. Every template is compiled and rendered
    /// for sample notifications of each kind, so a broken one fails here (`check-config`).
    pub(crate) fn load(dir: Option<&Path>) -> Result<Templates, String> {
        let mut env = Environment::new();
        // Strict: a misspelt variable is an error at load (the samples), not an empty string.
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_keep_trailing_newline(true);
        for (name, shipped) in SHIPPED {
            let source = match dir.map(|d| d.join(name)) {
                Some(path) if path.exists() => std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
                _ => shipped.to_owned(),
            };
            env.add_template_owned(name, source).map_err(|e| describe(&e))?;
        }
        if let Some(dir) = dir {
            if !dir.is_dir() {
                return Err(format!("{} is not a directory", dir.display()));
            }
            env.set_loader(minijinja::path_loader(dir));
        }
        let templates = Templates { env };
        for sample in samples() {
            templates.render(&sample)?;
        }
        Ok(templates)
    }

    /// Renders the mail for `context`.
    pub(crate) fn render(&self, context: &Context) -> Result<Rendered, String> {
        let value = Value::from_serialize(context);
        let render = |name: &str| {
            self.env.get_template(name).and_then(|t| t.render(&value)).map_err(|e| describe(&e))
        };
        let subject = clean_name(&render(SUBJECT)?);
        let subject = cut(&subject, MAX_SUBJECT_CHARS);
        Ok(Rendered {
            subject: if subject.is_empty() { "New notification".to_owned() } else { subject },
            text: render(TEXT)?,
            html: render(HTML)?,
        })
    }
}

/// A template error with its template, line and cause, as one line.
fn describe(error: &minijinja::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// One context of each kind, with and without optional values: every branch a template has
/// for the shipped kinds runs once at load.
fn samples() -> Vec<Context> {
    let full = Context {
        sender: "Alice".into(),
        sender_id: Some("@alice:example.org".into()),
        room: Some("Tea".into()),
        room_id: Some("!room:example.org".into()),
        event_id: Some("$event".into()),
        kind: "message",
        media: None,
        body: Some("Hello".into()),
        link: Some("https://app.example.org/#/room/!room:example.org".into()),
        unsubscribe_url: Some("https://app.example.org/unsubscribe".into()),
        unread: 2,
        missed_calls: 1,
    };
    let bare = Context {
        sender_id: None,
        room: None,
        room_id: None,
        event_id: None,
        body: None,
        link: None,
        unsubscribe_url: None,
        unread: 0,
        missed_calls: 0,
        ..full.clone()
    };
    let mut out = Vec::new();
    for base in [full, bare] {
        for (kind, media) in [
            ("message", None),
            ("notice", None),
            ("emote", None),
            ("encrypted", None),
            ("call", None),
            ("invite", None),
            ("other", None),
        ]
        .into_iter()
        .chain(
            ["image", "video", "audio", "file", "sticker", "location"]
                .into_iter()
                .map(|m| ("media", Some(m))),
        ) {
            out.push(Context { kind, media, ..base.clone() });
        }
    }
    out
}

/// Addressing of an app's mails.
#[derive(Debug, Clone)]
pub(crate) struct Sender {
    /// `From`.
    pub(crate) from: Mailbox,
    /// `Reply-To`.
    pub(crate) reply_to: Option<Mailbox>,
    /// The right-hand side of `Message-ID`s: the domain of `from`.
    pub(crate) id_domain: String,
}

/// The `List-Unsubscribe` link of one mail, and whether it takes RFC 8058's one-click POST.
#[derive(Debug, Clone)]
pub(crate) struct Unsubscribe {
    /// The link.
    pub(crate) url: String,
    /// `List-Unsubscribe-Post: List-Unsubscribe=One-Click`.
    pub(crate) one_click: bool,
}

/// The mail as sent: RFC 5322 headers and a multipart/alternative body, 7-bit ASCII.
///
/// `Message-ID` is `<message_id@domain>`: stable per (event, recipient), so a retried send of the
/// same event is recognisable (and deduplicated by clients that do).
pub(crate) fn mime(
    rendered: &Rendered,
    sender: &Sender,
    to: &Address,
    message_id: &str,
    unsubscribe: Option<&Unsubscribe>,
) -> Result<Vec<u8>, String> {
    let mut builder = lettre::Message::builder()
        .from(sender.from.clone())
        .to(Mailbox::new(None, to.clone()))
        .subject(rendered.subject.clone())
        .message_id(Some(format!("<{message_id}@{}>", sender.id_domain)))
        // RFC 3834: no vacation replies or bounces to automatic mail; Exchange's equivalent.
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-generated".to_owned(),
        ))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("X-Auto-Response-Suppress"),
            "All".to_owned(),
        ));
    if let Some(reply_to) = &sender.reply_to {
        builder = builder.reply_to(reply_to.clone());
    }
    if let Some(unsubscribe) = unsubscribe {
        builder = builder.raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("List-Unsubscribe"),
            format!("<{}>", unsubscribe.url),
        ));
        if unsubscribe.one_click {
            builder = builder.raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                "List-Unsubscribe=One-Click".to_owned(),
            ));
        }
    }
    let message = builder
        .multipart(MultiPart::alternative_plain_html(rendered.text.clone(), rendered.html.clone()))
        .map_err(|e| format!("cannot build the message: {e}"))?;
    Ok(message.formatted())
}

#[cfg(test)]
mod tests {
    use herald_core::RawObject;

    use super::*;

    fn notification(json: &str) -> Notification {
        let mut n: Notification = serde_json_notification(json);
        n.devices.clear();
        n
    }

    fn serde_json_notification(json: &str) -> Notification {
        let body = format!(r#"{{"notification": {json}}}"#);
        herald_core::NotifyRequest::from_slice(body.as_bytes()).expect("notification").notification
    }

    fn spec_example() -> Notification {
        notification(
            r##"{"event_id": "$3957tyerfgewrf384", "room_id": "!slw48wfj34rtnrf:example.com",
            "type": "m.room.message", "sender": "@exampleuser:matrix.org",
            "sender_display_name": "Major Tom", "room_name": "Mission Control",
            "room_alias": "#exampleroom:matrix.org", "prio": "high",
            "content": {"msgtype": "m.text", "body": "I'm floating in a most peculiar way."},
            "counts": {"unread": 2, "missed_calls": 1}, "devices": []}"##,
        )
    }

    fn options() -> ContextOptions {
        ContextOptions {
            include_content: true,
            max_body_chars: 1000,
            client_url: Some(
                UrlTemplate::new(
                    "https://app.example.org/#/room/{room_id}/{event_id}",
                    &["room_id", "event_id"],
                    &["https://", "http://"],
                )
                .unwrap(),
            ),
        }
    }

    fn device() -> Device {
        Device::new("org.example.email", "alice@example.org")
    }

    fn render(n: &Notification) -> Rendered {
        let templates = Templates::load(None).unwrap();
        templates.render(&context(n, &device(), &options(), None)).unwrap()
    }

    #[test]
    fn the_spec_example_renders_exactly() {
        let r = render(&spec_example());
        assert_eq!(r.subject, "Major Tom in Mission Control");
        assert_eq!(
            r.text,
            "Major Tom wrote in Mission Control:\n\nI'm floating in a most peculiar way.\n\n\
             Open it: https://app.example.org/#/room/!slw48wfj34rtnrf:example.com/$3957tyerfgewrf384\n\n\
             --\nYou get this mail because you turned on email notifications for your Matrix \
             account.\n"
        );
        let expected_html = r#"<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width"></head>
<body style="font-family: sans-serif; line-height: 1.4; color: #222;">
<p><strong>Major Tom</strong> wrote in <strong>Mission Control</strong>:</p>
<blockquote style="white-space: pre-wrap; margin: 0 0 1em 0; padding-left: 1em; border-left: 3px solid #ccc;">I&#x27;m floating in a most peculiar way.</blockquote>
<p><a href="https:&#x2f;&#x2f;app.example.org&#x2f;#&#x2f;room&#x2f;!slw48wfj34rtnrf:example.com&#x2f;$3957tyerfgewrf384">Open it</a></p>
<p style="color: #777; font-size: 0.85em;">You get this mail because you turned on email notifications for your Matrix account.</p>
</body>
</html>
"#;
        assert_eq!(r.html, expected_html);
    }

    #[test]
    fn each_kind_has_its_line() {
        let line = |json: &str| {
            let r = render(&notification(json));
            (r.subject, r.text.lines().next().unwrap_or_default().to_owned())
        };
        let base = r#""event_id": "$e", "room_id": "!r:x", "sender": "@bob:x", "devices": []"#;
        let (s, t) =
            line(&format!(r#"{{{base}, "type": "m.room.encrypted", "room_name": "Ops"}}"#));
        assert_eq!(
            (s.as_str(), t.as_str()),
            ("@bob:x in Ops", "@bob:x sent an encrypted message in Ops.")
        );
        let (_, t) = line(&format!(
            r#"{{{base}, "type": "m.room.message", "content": {{"msgtype": "m.image", "body": "cat.png"}}}}"#
        ));
        assert_eq!(t, "@bob:x sent an image in a direct chat.");
        let (_, t) = line(&format!(r#"{{{base}, "type": "m.call.invite"}}"#));
        assert_eq!(t, "@bob:x is calling you in a direct chat.");
        let (s, t) = line(&format!(
            r#"{{{base}, "type": "m.room.member", "membership": "invite", "user_is_target": true,
            "room_name": "Book club", "sender_display_name": "Bob"}}"#
        ));
        assert_eq!(
            (s.as_str(), t.as_str()),
            ("Bob invited you to Book club", "Bob invited you to Book club.")
        );
        let (_, t) = line(&format!(
            r#"{{{base}, "type": "m.room.message", "content": {{"msgtype": "m.emote", "body": "waves"}}}}"#
        ));
        assert_eq!(t, "In a direct chat:");
        // event_id_only pushers: no type, no content.
        let (s, t) = line(r#"{"event_id": "$e", "room_id": "!r:x", "devices": []}"#);
        assert_eq!(
            (s.as_str(), t.as_str()),
            ("Someone in a direct chat", "There is new activity from Someone in a direct chat.")
        );
        // A message type with no known text: no text shown.
        let (_, t) = line(&format!(
            r#"{{{base}, "type": "m.room.message", "content": {{"msgtype": "m.key.verification.request", "body": "secret"}}}}"#
        ));
        assert_eq!(t, "@bob:x sent a message in a direct chat.");
    }

    #[test]
    fn untrusted_values_are_escaped_stripped_and_cut() {
        let mut n = spec_example();
        n.sender_display_name = Some("<img src=x onerror=alert(1)>".into());
        n.room_name = Some("Evil\r\nBcc: everyone@example.org\u{202E}gnp.exe".into());
        n.room_id = Some("!a\"b&c=d#e/f?g h:x".into());
        let mut content = RawObject::new();
        content.insert_str("msgtype", "m.text");
        content.insert_str(
            "body",
            &format!("<script>x</script>\u{0}\u{7}line\r\nnext{}", "é".repeat(2000)),
        );
        n.content = Some(content);
        let r = render(&n);
        assert_eq!(
            r.subject,
            "<img src=x onerror=alert(1)> in Evil Bcc: everyone@example.orggnp.exe"
        );
        assert!(!r.html.contains("<img") && !r.html.contains("<script>"), "{}", r.html);
        assert!(r.html.contains("&lt;img src=x onerror=alert(1)&gt;"), "{}", r.html);
        assert!(r.html.contains("&lt;script&gt;x&lt;&#x2f;script&gt;line\nnext"), "{}", r.html);
        // The link's values cannot add parameters or fragments.
        assert!(r.text.contains("/room/!a%22b%26c%3Dd%23e%2Ff%3Fg%20h:x/"), "{}", r.text);
        // Cut to max_body_chars, with an ellipsis.
        let body = r.text.split("\n\n").nth(1).unwrap();
        assert_eq!(body.chars().count(), 1000);
        assert!(body.ends_with('…') && body.starts_with("<script>x</script>line\nnext"));
    }

    #[test]
    fn content_can_be_hidden_by_the_app_or_the_pusher() {
        let n = spec_example();
        let mut device = device();
        device.data.insert("include_content", &false);
        let c = context(&n, &device, &options(), None);
        assert_eq!((c.kind, c.body.as_deref()), ("message", None));
        let hidden = ContextOptions { include_content: false, ..options() };
        let mut asks = self::device();
        asks.data.insert("include_content", &true);
        assert_eq!(context(&n, &asks, &hidden, None).body, None);
        let r = Templates::load(None).unwrap().render(&c).unwrap();
        assert!(r.text.starts_with("Major Tom sent a message in Mission Control.\n"), "{}", r.text);
        assert!(!r.text.contains("floating") && !r.html.contains("floating"));
    }

    #[test]
    fn url_templates() {
        let schemes = &["https://", "http://"];
        let t = UrlTemplate::new("https://x.org/u?a={address}", &["address"], schemes).unwrap();
        assert_eq!(
            t.expand(&[("address", Some("a+b@x.org"))]).unwrap(),
            "https://x.org/u?a=a%2Bb@x.org"
        );
        assert_eq!(t.expand(&[("address", None)]), None);
        assert!(UrlTemplate::new("javascript:alert(1)", &[], schemes).is_err());
        assert!(UrlTemplate::new("https://x.org/{nope}", &["room_id"], schemes)
            .unwrap_err()
            .contains("{nope}"));
        assert!(UrlTemplate::new("https://x.org/{room_id", &["room_id"], schemes).is_err());
        assert!(UrlTemplate::new("https://x.org/ a", &[], schemes).is_err());
    }

    #[test]
    fn operator_templates_override_and_are_checked_at_load() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("subject.txt"), "[Chat] {{ sender }}\nBcc: x@y.z").unwrap();
        std::fs::write(dir.path().join("footer.txt"), "Bye {{ sender }}").unwrap();
        std::fs::write(dir.path().join("body.txt"), "{{ body }}\n{% include \"footer.txt\" %}")
            .unwrap();
        let t = Templates::load(Some(dir.path())).unwrap();
        let r = t.render(&context(&spec_example(), &device(), &options(), None)).unwrap();
        // A line break in an operator's subject cannot start a header.
        assert_eq!(r.subject, "[Chat] Major Tom Bcc: x@y.z");
        assert_eq!(r.text, "I'm floating in a most peculiar way.\nBye Major Tom");
        assert!(r.html.contains("Mission Control"), "the shipped HTML stays");

        std::fs::write(dir.path().join("body.txt"), "{{ bdoy }}").unwrap();
        let e = Templates::load(Some(dir.path())).unwrap_err();
        assert!(e.contains("body.txt") && e.contains("undefined"), "{e}");
        std::fs::write(dir.path().join("body.txt"), "{% if %}").unwrap();
        assert!(Templates::load(Some(dir.path())).unwrap_err().contains("body.txt"));
        std::fs::write(
            dir.path().join("body.txt"),
            "{% for i in range(100000) %}{{ i }}{% endfor %}",
        )
        .unwrap();
        let e = Templates::load(Some(dir.path())).unwrap_err();
        assert!(e.contains("fuel"), "{e}");
        assert!(Templates::load(Some(&dir.path().join("missing"))).is_err());
    }

    #[test]
    fn the_mime_message_has_the_headers_and_both_parts() {
        let r = render(&spec_example());
        let sender = Sender {
            from: "Example Chat <notify@example.org>".parse().unwrap(),
            reply_to: Some("support@example.org".parse().unwrap()),
            id_domain: "example.org".into(),
        };
        let to: Address = "alice@example.org".parse().unwrap();
        let unsubscribe = Unsubscribe {
            url: "https://example.org/u?a=alice@example.org".into(),
            one_click: true,
        };
        let raw =
            mime(&r, &sender, &to, "0b6f3c9e-1b2c-8d3e-8f40-5a6b7c8d9e0f", Some(&unsubscribe))
                .unwrap();
        assert!(raw.is_ascii(), "7-bit on the wire");
        let text = String::from_utf8(raw).unwrap();
        let (head, _) = text.split_once("\r\n\r\n").unwrap();
        for line in [
            "From: \"Example Chat\" <notify@example.org>",
            "Reply-To: support@example.org",
            "To: alice@example.org",
            "Subject: Major Tom in Mission Control",
            "Message-ID: <0b6f3c9e-1b2c-8d3e-8f40-5a6b7c8d9e0f@example.org>",
            "Auto-Submitted: auto-generated",
            "X-Auto-Response-Suppress: All",
            "List-Unsubscribe: <https://example.org/u?a=alice@example.org>",
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
            "MIME-Version: 1.0",
        ] {
            assert!(head.lines().any(|l| l == line), "no `{line}` in:\n{head}");
        }
        assert!(head.contains("Content-Type: multipart/alternative"), "{head}");
        assert!(text.contains("Content-Type: text/plain; charset=utf-8"), "{text}");
        assert!(text.contains("Content-Type: text/html; charset=utf-8"), "{text}");
    }
}
