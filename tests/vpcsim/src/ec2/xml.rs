//! Minimal XML writer for EC2 Query responses and error envelopes.

use std::fmt::Display;

/// The EC2 API namespace of every success response.
pub const NS: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

/// An XML document under construction.
#[derive(Debug, Default)]
pub struct Xml(String);

/// Escapes text for element content.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

impl Xml {
    /// An empty fragment.
    pub fn new() -> Self {
        Self(String::new())
    }
    /// `<tag>`.
    pub fn open(&mut self, tag: &str) -> &mut Self {
        self.0.push('<');
        self.0.push_str(tag);
        self.0.push('>');
        self
    }
    /// `</tag>`.
    pub fn close(&mut self, tag: &str) -> &mut Self {
        self.0.push_str("</");
        self.0.push_str(tag);
        self.0.push('>');
        self
    }
    /// `<tag>value</tag>` with the value escaped.
    pub fn leaf(&mut self, tag: &str, value: impl Display) -> &mut Self {
        self.open(tag);
        self.0.push_str(&escape(&value.to_string()));
        self.close(tag)
    }
    /// `<tag>value</tag>` if `value` is `Some`.
    pub fn opt(&mut self, tag: &str, value: Option<impl Display>) -> &mut Self {
        if let Some(v) = value {
            self.leaf(tag, v);
        }
        self
    }
    /// A `<tag><item>…</item>…</tag>` list, each item written by `f`.
    pub fn items<T>(
        &mut self,
        tag: &str,
        items: impl IntoIterator<Item = T>,
        mut f: impl FnMut(&mut Xml, T),
    ) -> &mut Self {
        self.open(tag);
        for it in items {
            self.open("item");
            f(self, it);
            self.close("item");
        }
        self.close(tag)
    }
    /// `<tagSet>` of key/value tags.
    pub fn tag_set<'a>(
        &mut self,
        tags: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> &mut Self {
        self.items("tagSet", tags, |x, (k, v)| {
            x.leaf("key", k).leaf("value", v);
        })
    }
    /// The written text.
    pub fn into_string(self) -> String {
        self.0
    }
}

/// A complete success document `<{action}Response>` around `body`.
pub fn success(action: &str, request_id: &str, body: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{action}Response xmlns=\"{NS}\">\
         <requestId>{request_id}</requestId>{body}</{action}Response>"
    )
}

/// A complete error envelope (note `RequestID`, capitalised unlike success responses).
pub fn error(code: &str, message: &str, request_id: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code>\
         <Message>{}</Message></Error></Errors><RequestID>{request_id}</RequestID></Response>",
        escape(code),
        escape(message)
    )
}
