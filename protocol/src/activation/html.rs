//! The little of HTML that iTunes-style answers need (docs/protocol.md §5.5): an
//! `<input name="isAuthRequired" value="true">`, a `<script type="text/x-apple-plist">` holding a
//! plist, and the `<title>`. HTML is rarely well-formed XML, so this is a tolerant tag scanner,
//! not a parser; it never fails, it only finds less.

/// Byte offset of `needle` in `haystack` at or after `from`, ASCII case-insensitively.
fn find_ci(haystack: &str, needle: &str, from: usize) -> Option<usize> {
    let hay = haystack.as_bytes();
    let needle = needle.as_bytes();
    if from > hay.len() || needle.is_empty() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
        .map(|i| from + i)
}

/// A start tag: its attributes (names lower-cased) and the offset just past its `>`.
struct StartTag {
    attributes: Vec<(String, String)>,
    end: usize,
}

impl StartTag {
    fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every start tag named `name` (case-insensitive), in document order.
fn start_tags(html: &str, name: &str) -> Vec<StartTag> {
    let open = format!("<{name}");
    let mut tags = Vec::new();
    let mut from = 0;
    while let Some(at) = find_ci(html, &open, from) {
        let after_name = at + open.len();
        from = after_name;
        // `<inputs` is not `<input`.
        match html.as_bytes().get(after_name) {
            Some(b) if b.is_ascii_whitespace() || *b == b'>' || *b == b'/' => {}
            _ => continue,
        }
        let (attributes, end) = read_attributes(html, after_name);
        tags.push(StartTag { attributes, end });
        from = end;
    }
    tags
}

/// Reads `name="v" name='v' name=v name` up to the tag's `>`; returns the offset past it.
fn read_attributes(html: &str, mut i: usize) -> (Vec<(String, String)>, usize) {
    let bytes = html.as_bytes();
    let mut attributes = Vec::new();
    loop {
        while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b'/') {
            i += 1;
        }
        if i >= bytes.len() {
            return (attributes, bytes.len());
        }
        if bytes[i] == b'>' {
            return (attributes, i + 1);
        }
        let name_start = i;
        while i < bytes.len()
            && !bytes[i].is_ascii_whitespace()
            && !matches!(bytes[i], b'=' | b'>' | b'/')
        {
            i += 1;
        }
        let name = html[name_start..i].to_ascii_lowercase();
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < bytes.len() && bytes[i] == b'=' {
            i += 1;
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < bytes.len() && matches!(bytes[i], b'"' | b'\'') {
                let quote = bytes[i];
                let start = i + 1;
                let end = bytes[start..]
                    .iter()
                    .position(|&b| b == quote)
                    .map_or(bytes.len(), |p| start + p);
                value = html[start..end].to_string();
                i = (end + 1).min(bytes.len());
            } else {
                let start = i;
                while i < bytes.len() && !bytes[i].is_ascii_whitespace() && bytes[i] != b'>' {
                    i += 1;
                }
                value = html[start..i].to_string();
            }
        }
        if !name.is_empty() {
            attributes.push((name, value));
        }
    }
}

/// libideviceactivation's `//input[@name='isAuthRequired' and @value='true']`.
pub(super) fn auth_required(html: &str) -> bool {
    start_tags(html, "input").iter().any(|tag| {
        tag.attribute("name") == Some(super::field::IS_AUTH_REQUIRED)
            && tag.attribute("value") == Some("true")
    })
}

/// The text inside the first `<script type="text/x-apple-plist">`, trimmed.
pub(super) fn plist_script(html: &str) -> Option<&str> {
    start_tags(html, "script").into_iter().find_map(|tag| {
        let kind = tag.attribute("type")?;
        if !kind.eq_ignore_ascii_case(super::content_type::HTML_PLIST_SCRIPT) {
            return None;
        }
        let close = find_ci(html, "</script", tag.end)?;
        Some(html[tag.end..close].trim())
    })
}

/// The `<title>` text, trimmed; `None` if absent or empty.
pub(super) fn title(html: &str) -> Option<String> {
    let tag = start_tags(html, "title").into_iter().next()?;
    let close = find_ci(html, "</title", tag.end)?;
    let text = html[tag.end..close].trim();
    (!text.is_empty()).then(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_auth_input_in_sloppy_html() {
        let html = "<HTML><body><form><INPUT type=hidden NAME='isAuthRequired' Value=\"true\">\
                    <inputs name=isAuthRequired value=true></form>";
        assert!(auth_required(html));
        assert!(!auth_required("<input name=isAuthRequired value=false>"));
        assert!(!auth_required("<inputs name=isAuthRequired value=true>"));
        assert!(auth_required("<input name=isAuthRequired value=true"));
    }

    #[test]
    fn finds_plist_script_and_title() {
        let html = "<html><head><title> Activation </title>\
                    <script type=\"text/javascript\">var a = 1;</script>\
                    <script id=\"protocol\" type=\"text/x-apple-plist\">\n<plist version=\"1.0\"><dict/></plist>\n</SCRIPT>";
        assert_eq!(
            plist_script(html),
            Some("<plist version=\"1.0\"><dict/></plist>")
        );
        assert_eq!(title(html).as_deref(), Some("Activation"));
        assert_eq!(
            plist_script("<script type=text/x-apple-plist>unterminated"),
            None
        );
        assert_eq!(title("<title></title>"), None);
    }

    #[test]
    fn never_panics_on_truncated_or_odd_input() {
        for html in [
            "",
            "<",
            "<input",
            "<input ",
            "<input name",
            "<input name=",
            "<input name='",
            "<input name=\"x",
            "<script",
            "<script type",
            "<title",
            "<title>",
            "<<<>>>",
            "<input é=ü>",
            "<script type='text/x-apple-plist'>é</script",
        ] {
            let _ = auth_required(html);
            let _ = plist_script(html);
            let _ = title(html);
        }
    }
}
