//! Buddyml (`application/x-buddyml`): the XML UI pages Albert sends Setup Assistant — the
//! Activation Lock form, the wrong-credentials alert, error pages and acknowledgements
//! (docs/protocol.md §5.5, §5.6).
//!
//! The parser reads what libideviceactivation reads, by the same paths; the builder renders the
//! pages a stand-in server needs with the same structure, so the two are tested against each
//! other and against hand-written pages.

use std::fmt::Write as _;

use super::field;

/// The Activation Lock page's `name` on Albert.
const LOCK_PAGE_NAME: &str = "FMIPLockChallenge";
/// Pages are small; a cap keeps a hostile body from costing much memory.
const NODES_LIMIT: u32 = 100_000;

/// One input row of a form (`<editableTextRow>`). Its `id` is the form field name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputField {
    pub id: String,
    pub label: Option<String>,
    pub placeholder: Option<String>,
    /// `secure="true"`: a password row (where a bypass code goes).
    pub secure: bool,
    /// `keyboardType`, e.g. `email` for the Apple ID row.
    pub keyboard_type: Option<String>,
}

impl InputField {
    /// A plain row, e.g. the Apple Account.
    pub fn text(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            label: None,
            placeholder: None,
            secure: false,
            keyboard_type: None,
        }
    }

    /// A `secure="true"` row, e.g. the password.
    pub fn secure(id: impl Into<String>) -> Self {
        Self {
            secure: true,
            ..Self::text(id)
        }
    }

    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    pub fn with_placeholder(mut self, placeholder: impl Into<String>) -> Self {
        self.placeholder = Some(placeholder.into());
        self
    }

    pub fn with_keyboard_type(mut self, keyboard_type: impl Into<String>) -> Self {
        self.keyboard_type = Some(keyboard_type.into());
        self
    }
}

/// `<alert title message>`: Albert's answer to wrong credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub title: Option<String>,
    pub message: Option<String>,
}

/// The page's `<linkBarItem url=…>`: where Setup Assistant posts the form. libideviceactivation
/// ignores it and posts to the default `deviceActivation` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitTarget {
    pub id: Option<String>,
    pub url: String,
    pub http_method: Option<String>,
    /// `enabledFunction`: the page script's function that enables the button.
    pub enabled_function: Option<String>,
}

/// A footer with a `url` (the lock page's help link); not part of the description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelpLink {
    pub label: String,
    pub url: String,
}

/// A parsed (or to-be-rendered) buddyml page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuddyPage {
    /// `/xmlui/page/@name`, e.g. `FMIPLockChallenge`.
    pub name: Option<String>,
    /// `/xmlui/navigationBar/@title`: a navigationBar directly under `xmlui` marks an error page.
    pub error_title: Option<String>,
    /// `/xmlui/page/navigationBar/@title`.
    pub page_title: Option<String>,
    /// `/xmlui/alert`.
    pub alert: Option<Alert>,
    /// Footer texts (`/xmlui/page/tableView/section/footer[not(@url)]`, else the
    /// `<section footer="…">` attributes of error pages), joined with `\n`.
    pub description: Option<String>,
    /// Every `/xmlui/page//editableTextRow`, in document order.
    pub fields: Vec<InputField>,
    /// Every attribute of `/xmlui/serverInfo`, in document order: hidden fields to echo.
    pub hidden: Vec<(String, String)>,
    /// `/xmlui/clientInfo[@ack-received='true']`: the device is already activated.
    pub ack_received: bool,
    pub submit: Option<SubmitTarget>,
    /// `/xmlui/page/script`: the page's own checks (e.g. `enableNext()`); clients ignore it.
    pub script: Option<String>,
    /// `loadingTitle` of the page's navigationBar.
    pub loading_title: Option<String>,
    /// The first `footer[@url]` of the page.
    pub help: Option<HelpLink>,
}

/// Why a body is not a buddyml page.
#[derive(Debug, thiserror::Error)]
pub enum BuddymlError {
    #[error("buddyml body is not UTF-8")]
    NotUtf8,
    #[error("buddyml body is not well-formed XML: {0}")]
    Xml(#[from] roxmltree::Error),
    #[error("buddyml root element is <{root}>, expected <xmlui>")]
    NotXmlui { root: String },
    #[error("an editableTextRow has no id")]
    FieldWithoutId,
}

fn attr(node: roxmltree::Node<'_, '_>, name: &str) -> Option<String> {
    node.attribute(name).map(str::to_string)
}

fn element_children<'a, 'i>(
    node: roxmltree::Node<'a, 'i>,
    name: &'static str,
) -> impl Iterator<Item = roxmltree::Node<'a, 'i>> {
    node.children()
        .filter(move |n| n.is_element() && n.tag_name().name() == name)
}

/// All text below a node, trimmed (a footer may wrap part of its text in `<div>`s).
fn text_of(node: roxmltree::Node<'_, '_>) -> String {
    node.descendants()
        .filter(|n| n.is_text())
        .filter_map(|n| n.text())
        .collect::<String>()
        .trim()
        .to_string()
}

impl BuddyPage {
    /// Parses a buddyml body. Unknown elements are ignored; only broken XML, a root other than
    /// `xmlui` or a row without `id` fail.
    pub fn parse(body: &[u8]) -> Result<Self, BuddymlError> {
        let text = std::str::from_utf8(body).map_err(|_| BuddymlError::NotUtf8)?;
        let text = text.trim_start_matches('\u{feff}');
        let options = roxmltree::ParsingOptions {
            allow_dtd: true,
            nodes_limit: NODES_LIMIT,
            ..roxmltree::ParsingOptions::default()
        };
        let doc = roxmltree::Document::parse_with_options(text, options)?;
        let root = doc.root_element();
        if root.tag_name().name() != "xmlui" {
            return Err(BuddymlError::NotXmlui {
                root: root.tag_name().name().chars().take(64).collect(),
            });
        }

        let mut page = Self {
            error_title: element_children(root, "navigationBar").find_map(|n| attr(n, "title")),
            ack_received: element_children(root, "clientInfo")
                .any(|n| n.attribute("ack-received") == Some("true")),
            alert: element_children(root, "alert").next().map(|n| Alert {
                title: attr(n, "title"),
                message: attr(n, "message"),
            }),
            hidden: element_children(root, "serverInfo")
                .flat_map(|n| n.attributes())
                .map(|a| (a.name().to_string(), a.value().to_string()))
                .collect(),
            ..Self::default()
        };

        let mut footers = Vec::new();
        for p in element_children(root, "page") {
            if page.name.is_none() {
                page.name = attr(p, "name");
            }
            if page.page_title.is_none() {
                page.page_title =
                    element_children(p, "navigationBar").find_map(|n| attr(n, "title"));
                page.loading_title =
                    element_children(p, "navigationBar").find_map(|n| attr(n, "loadingTitle"));
            }
            if page.script.is_none() {
                page.script = element_children(p, "script")
                    .next()
                    .map(|n| n.children().filter_map(|t| t.text()).collect::<String>());
            }
            if page.submit.is_none() {
                page.submit = p
                    .descendants()
                    .filter(|n| n.is_element() && n.tag_name().name() == "linkBarItem")
                    .find_map(|n| {
                        Some(SubmitTarget {
                            url: attr(n, "url")?,
                            id: attr(n, "id"),
                            http_method: attr(n, "httpMethod"),
                            enabled_function: attr(n, "enabledFunction"),
                        })
                    });
            }
            for section in
                element_children(p, "tableView").flat_map(|t| element_children(t, "section"))
            {
                footers.extend(
                    element_children(section, "footer")
                        .filter(|f| f.attribute("url").is_none())
                        .map(text_of),
                );
                if page.help.is_none() {
                    page.help = element_children(section, "footer").find_map(|f| {
                        Some(HelpLink {
                            url: attr(f, "url")?,
                            label: text_of(f),
                        })
                    });
                }
            }
            for row in p
                .descendants()
                .filter(|n| n.is_element() && n.tag_name().name() == "editableTextRow")
            {
                page.fields.push(InputField {
                    id: attr(row, "id").ok_or(BuddymlError::FieldWithoutId)?,
                    label: attr(row, "label"),
                    placeholder: attr(row, "placeholder"),
                    secure: row.attribute("secure") == Some("true"),
                    keyboard_type: attr(row, "keyboardType"),
                });
            }
        }
        if footers.iter().all(String::is_empty) {
            // Error pages carry their text as `<section footer="…">` (libideviceactivation#23).
            footers = root
                .descendants()
                .filter(|n| n.is_element() && n.tag_name().name() == "section")
                .filter(|n| n.attribute("footerLinkURL").is_none())
                .filter_map(|n| n.attribute("footer"))
                .map(|s| s.trim().to_string())
                .collect();
        }
        footers.retain(|f| !f.is_empty());
        if !footers.is_empty() {
            page.description = Some(footers.join("\n"));
        }
        Ok(page)
    }

    /// The title to show: the alert's, else the page's, else the error page's.
    pub fn title(&self) -> Option<&str> {
        self.alert
            .as_ref()
            .and_then(|a| a.title.as_deref())
            .or(self.page_title.as_deref())
            .or(self.error_title.as_deref())
    }

    /// libideviceactivation's test: a `serverInfo` attribute named `isAuthRequired`.
    pub fn is_auth_required(&self) -> bool {
        self.hidden_field(field::IS_AUTH_REQUIRED).is_some()
    }

    /// libideviceactivation's `has_errors`: an error navigationBar, or nothing to submit.
    pub fn has_errors(&self) -> bool {
        self.error_title.is_some() || (self.fields.is_empty() && self.hidden.is_empty())
    }

    pub fn hidden_field(&self, name: &str) -> Option<&str> {
        self.hidden
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The Activation Lock form (docs/protocol.md §5.6): a `FMIPLockChallenge` page with the given
    /// rows (their ids are the field names a client must send back) and `serverInfo` hidden
    /// fields — typically `activation-info-base64`; `isAuthRequired="true"` is added if absent.
    /// A multi-line description becomes one footer per line.
    pub fn lock_form(
        title: impl Into<String>,
        description: impl Into<String>,
        fields: Vec<InputField>,
        server_info: Vec<(String, String)>,
    ) -> Self {
        let mut hidden = server_info;
        if !hidden.iter().any(|(n, _)| n == field::IS_AUTH_REQUIRED) {
            hidden.push((field::IS_AUTH_REQUIRED.to_string(), "true".to_string()));
        }
        let description = description.into();
        Self {
            name: Some(LOCK_PAGE_NAME.to_string()),
            page_title: Some(title.into()),
            description: (!description.is_empty()).then_some(description),
            fields,
            hidden,
            ..Self::default()
        }
    }

    /// Sets the form's submit target (`<linkBarItem id="next" url=… httpMethod="POST">`).
    pub fn with_submit_url(mut self, url: impl Into<String>) -> Self {
        self.submit = Some(SubmitTarget {
            id: Some("next".to_string()),
            url: url.into(),
            http_method: Some("POST".to_string()),
            enabled_function: None,
        });
        self
    }

    /// The page's script and the function of it that enables Next (Albert's lock page has
    /// `enableNext`).
    pub fn with_script(mut self, script: impl Into<String>, enabled_function: &str) -> Self {
        self.script = Some(script.into());
        if let Some(submit) = self.submit.as_mut() {
            submit.enabled_function = Some(enabled_function.to_string());
        }
        self
    }

    pub fn with_loading_title(mut self, title: impl Into<String>) -> Self {
        self.loading_title = Some(title.into());
        self
    }

    pub fn with_help(mut self, label: impl Into<String>, url: impl Into<String>) -> Self {
        self.help = Some(HelpLink {
            label: label.into(),
            url: url.into(),
        });
        self
    }

    /// The wrong-credentials answer: the form again, with an `<alert>` on top.
    pub fn auth_alert(
        title: impl Into<String>,
        message: impl Into<String>,
        form: BuddyPage,
    ) -> Self {
        Self {
            alert: Some(Alert {
                title: Some(title.into()),
                message: Some(message.into()),
            }),
            ..form
        }
    }

    /// An error page as Albert sends it (libideviceactivation#23): a navigationBar directly under
    /// `xmlui` and the text in `<section footer="…">`.
    pub fn error_page(title: impl Into<String>, description: impl Into<String>) -> Self {
        let description = description.into();
        Self {
            error_title: Some(title.into()),
            description: (!description.is_empty()).then_some(description),
            ..Self::default()
        }
    }

    /// "Already activated": `<clientInfo ack-received="true"/>`.
    pub fn ack_page() -> Self {
        Self {
            ack_received: true,
            ..Self::default()
        }
    }

    /// The page as buddyml text; [`BuddyPage::parse`] reads back what was put in (descriptions
    /// line by line, trimmed).
    pub fn render(&self) -> String {
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        out.push_str("<xmlui style=\"setupAssistant\">\n");
        if let Some(title) = &self.error_title {
            let _ = writeln!(
                out,
                "  <navigationBar title=\"{}\" hidesBackButton=\"true\"/>",
                escape(title)
            );
        }
        if let Some(alert) = &self.alert {
            out.push_str("  <alert");
            push_attr(&mut out, "title", alert.title.as_deref());
            push_attr(&mut out, "message", alert.message.as_deref());
            out.push_str("/>\n");
        }
        if self.ack_received {
            out.push_str("  <clientInfo ack-received=\"true\"/>\n");
        }
        let description_lines: Vec<&str> = self
            .description
            .as_deref()
            .map(|d| d.lines().map(str::trim).filter(|l| !l.is_empty()).collect())
            .unwrap_or_default();
        let has_page = self.name.is_some()
            || self.page_title.is_some()
            || self.submit.is_some()
            || !self.fields.is_empty()
            || !description_lines.is_empty()
            || self.help.is_some();
        if has_page {
            out.push_str("  <page");
            push_attr(&mut out, "name", self.name.as_deref());
            out.push_str(">\n");
            if let Some(script) = &self.script {
                // CDATA cannot hold its own end marker: split it across two sections.
                let _ = writeln!(
                    out,
                    "    <script><![CDATA[{}]]></script>",
                    script.replace("]]>", "]]]]><![CDATA[>")
                );
            }
            if self.page_title.is_some() || self.submit.is_some() {
                out.push_str("    <navigationBar");
                push_attr(&mut out, "title", self.page_title.as_deref());
                out.push_str(" hidesBackButton=\"false\"");
                push_attr(&mut out, "loadingTitle", self.loading_title.as_deref());
                match &self.submit {
                    Some(submit) => {
                        out.push_str(">\n      <linkBarItem");
                        push_attr(&mut out, "id", submit.id.as_deref());
                        push_attr(&mut out, "url", Some(&submit.url));
                        out.push_str(" position=\"right\" label=\"Next\"");
                        push_attr(
                            &mut out,
                            "enabledFunction",
                            submit.enabled_function.as_deref(),
                        );
                        push_attr(&mut out, "httpMethod", submit.http_method.as_deref());
                        out.push_str("/>\n    </navigationBar>\n");
                    }
                    None => out.push_str("/>\n"),
                }
            }
            out.push_str("    <tableView>\n");
            if self.error_title.is_some() {
                for line in &description_lines {
                    let _ = writeln!(out, "      <section footer=\"{}\"/>", escape(line));
                }
            } else if !description_lines.is_empty() {
                out.push_str("      <section>\n");
                for line in &description_lines {
                    let _ = writeln!(out, "        <footer>{}</footer>", escape(line));
                }
                out.push_str("      </section>\n");
            }
            if !self.fields.is_empty() {
                if !description_lines.is_empty() && self.error_title.is_none() {
                    // Albert's lock page spaces the rows from the text with an empty section.
                    out.push_str("      <section/>\n");
                }
                out.push_str("      <section>\n");
                for f in &self.fields {
                    out.push_str("        <editableTextRow");
                    push_attr(&mut out, "id", Some(&f.id));
                    push_attr(&mut out, "label", f.label.as_deref());
                    push_attr(&mut out, "placeholder", f.placeholder.as_deref());
                    push_attr(&mut out, "keyboardType", f.keyboard_type.as_deref());
                    if f.secure {
                        out.push_str(" secure=\"true\"");
                    } else {
                        out.push_str(
                            " autocapitalizationType=\"none\" autocorrectionType=\"no\" value=\"\"",
                        );
                    }
                    out.push_str("/>\n");
                }
                out.push_str("      </section>\n");
            }
            if let Some(help) = &self.help {
                out.push_str("      <section>\n        <footer");
                push_attr(&mut out, "url", Some(&help.url));
                let _ = writeln!(out, ">{}</footer>\n      </section>", escape(&help.label));
            }
            out.push_str("    </tableView>\n  </page>\n");
        }
        if !self.hidden.is_empty() {
            out.push_str("  <serverInfo");
            let mut seen: Vec<&str> = Vec::new();
            for (name, value) in &self.hidden {
                // XML forbids repeated attributes; the first value wins, as when parsing.
                if is_xml_name(name) && !seen.contains(&name.as_str()) {
                    seen.push(name);
                    push_attr(&mut out, name, Some(value));
                }
            }
            out.push_str("/>\n");
        }
        out.push_str("</xmlui>\n");
        out
    }
}

fn push_attr(out: &mut String, name: &str, value: Option<&str>) {
    if let Some(value) = value {
        let _ = write!(out, " {name}=\"{}\"", escape(value));
    }
}

/// Attribute names we can write without breaking the document.
fn is_xml_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Escapes text for both attribute values and element content; whitespace controls become
/// character references so attribute values keep them.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            // Other C0 controls are not allowed in XML 1.0 at all.
            c if (c as u32) < 0x20 => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock_form() -> BuddyPage {
        BuddyPage::lock_form(
            "Activation Lock",
            "This iPhone is linked to an Apple Account.\nSign in with the Apple Account and password that were used to set up this iPhone. j•••@i•••.com",
            vec![
                InputField::text("login")
                    .with_label("Apple ID")
                    .with_keyboard_type("email"),
                InputField::secure("password")
                    .with_label("Password")
                    .with_placeholder("Required"),
            ],
            vec![(
                "activation-info-base64".to_string(),
                "PD94bWwgdmVyc2lvbj0iMS4wIj8+".to_string(),
            )],
        )
        .with_submit_url("/deviceservices/deviceActivation")
        .with_script("function enableNext() { return a < b && c; } // ]]> inside", "enableNext")
        .with_loading_title("Activating...")
        .with_help("Activation Lock Help", "https://support.apple.com/HT201441")
    }

    #[test]
    fn lock_form_round_trips_through_render_and_parse() {
        let page = lock_form();
        let xml = page.render();
        let parsed = BuddyPage::parse(xml.as_bytes()).expect("parse");
        assert_eq!(parsed, page);
        assert_eq!(parsed.title(), Some("Activation Lock"));
        assert!(parsed.is_auth_required());
        assert!(!parsed.has_errors());
        assert_eq!(
            parsed.hidden,
            vec![
                (
                    "activation-info-base64".to_string(),
                    "PD94bWwgdmVyc2lvbj0iMS4wIj8+".to_string()
                ),
                ("isAuthRequired".to_string(), "true".to_string()),
            ]
        );
    }

    #[test]
    fn lock_form_has_the_reference_structure() {
        let xml = lock_form().render();
        let doc = roxmltree::Document::parse(&xml).expect("well-formed");
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "xmlui");
        let page = element_children(root, "page").next().expect("page");
        assert_eq!(page.attribute("name"), Some("FMIPLockChallenge"));
        let first = page.first_element_child().expect("children");
        assert_eq!(first.tag_name().name(), "script");
        assert!(first.text().is_some_and(|t| t.contains("enableNext")));
        let nav = element_children(page, "navigationBar")
            .next()
            .expect("navigationBar");
        assert_eq!(nav.attribute("title"), Some("Activation Lock"));
        assert_eq!(nav.attribute("hidesBackButton"), Some("false"));
        assert_eq!(nav.attribute("loadingTitle"), Some("Activating..."));
        let link = element_children(nav, "linkBarItem")
            .next()
            .expect("linkBarItem");
        assert_eq!(link.attribute("httpMethod"), Some("POST"));
        assert_eq!(
            link.attribute("url"),
            Some("/deviceservices/deviceActivation")
        );
        assert_eq!(link.attribute("enabledFunction"), Some("enableNext"));
        assert_eq!(link.attribute("position"), Some("right"));
        let sections: Vec<_> = element_children(page, "tableView")
            .flat_map(|t| element_children(t, "section"))
            .collect();
        assert_eq!(sections.len(), 4);
        assert_eq!(element_children(sections[0], "footer").count(), 2);
        assert_eq!(sections[1].children().count(), 0, "an empty section");
        let rows: Vec<_> = element_children(sections[2], "editableTextRow").collect();
        assert_eq!(rows[0].attribute("id"), Some("login"));
        assert_eq!(rows[0].attribute("label"), Some("Apple ID"));
        assert_eq!(rows[0].attribute("keyboardType"), Some("email"));
        assert_eq!(rows[0].attribute("value"), Some(""));
        assert_eq!(rows[0].attribute("secure"), None);
        assert_eq!(rows[1].attribute("id"), Some("password"));
        assert_eq!(rows[1].attribute("placeholder"), Some("Required"));
        assert_eq!(rows[1].attribute("secure"), Some("true"));
        let help = element_children(sections[3], "footer")
            .next()
            .expect("help");
        assert!(help.attribute("url").is_some());
        let server_info = element_children(root, "serverInfo")
            .next()
            .expect("serverInfo");
        assert_eq!(server_info.attribute("isAuthRequired"), Some("true"));
        assert!(server_info.attribute("activation-info-base64").is_some());
        assert_eq!(element_children(root, "navigationBar").count(), 0);
    }

    #[test]
    fn alert_error_and_ack_pages_round_trip() {
        let alert = BuddyPage::auth_alert(
            "Apple Account disabled",
            "The \"code\" <was> wrong & rejected.",
            lock_form(),
        );
        let parsed = BuddyPage::parse(alert.render().as_bytes()).expect("alert");
        assert_eq!(parsed, alert);
        assert_eq!(parsed.title(), Some("Apple Account disabled"));

        let error = BuddyPage::error_page(
            "Activation Error",
            "Activation request could not be completed.\nPlease retry activation.",
        );
        let xml = error.render();
        assert!(xml.contains("<section footer=\"Activation request could not be completed.\"/>"));
        let parsed = BuddyPage::parse(xml.as_bytes()).expect("error");
        assert_eq!(parsed, error);
        assert!(parsed.has_errors());

        let ack = BuddyPage::parse(BuddyPage::ack_page().render().as_bytes()).expect("ack");
        assert!(ack.ack_received);
    }

    #[test]
    fn parses_hand_written_error_page_like_issue_23() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<xmlui>
<navigationBar title="Activation Error" hidesBackButton="true"/>
<page>
<tableView>
<section footer="Activation request could not be completed. Please try again later." footerLinkLabel="Learn more"/>
<section footer="Link" footerLinkURL="https://support.apple.com"/>
</tableView>
</page>
</xmlui>"#;
        let page = BuddyPage::parse(xml).expect("parse");
        assert_eq!(page.error_title.as_deref(), Some("Activation Error"));
        assert_eq!(
            page.description.as_deref(),
            Some("Activation request could not be completed. Please try again later.")
        );
        assert!(page.has_errors());
        assert!(page.fields.is_empty());
    }

    #[test]
    fn parses_hand_written_lock_page_with_extras() {
        // Scripts, CDATA, comments, a DOCTYPE, extra rows and nested markup are all tolerated.
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE xmlui>
<xmlui style="setupAssistant">
  <!-- comment -->
  <page name="FMIPLockChallenge">
    <script><![CDATA[ function validate() { return a < b && c; } ]]></script>
    <navigationBar title="Activation Lock" hidesBackButton="false" loadingTitle="Verifying...">
      <linkBarItem id="next" url="/deviceservices/deviceActivation" position="right" label="Next" enabledFunction="validate" httpMethod="POST"/>
    </navigationBar>
    <tableView>
      <section>
        <footer>This iPhone is linked to an Apple Account. Sign in with <div class="bold">j•••@icloud.com</div></footer>
        <footer url="https://support.apple.com/kb/HT201441">Activation Lock Help</footer>
      </section>
      <section>
        <editableTextRow id="appleId" label="Apple Account" placeholder="example@icloud.com" keyboardType="emailAddress"/>
        <editableTextRow id="pwd" label="Password" placeholder="Required" secure="true"/>
      </section>
    </tableView>
  </page>
  <serverInfo activation-info-base64="QUJD" isAuthRequired="true" machineName="FMIP" sessionId="42"/>
</xmlui>"#;
        let page = BuddyPage::parse(xml.as_bytes()).expect("parse");
        assert_eq!(page.name.as_deref(), Some("FMIPLockChallenge"));
        assert_eq!(page.title(), Some("Activation Lock"));
        assert_eq!(
            page.description.as_deref(),
            Some("This iPhone is linked to an Apple Account. Sign in with j•••@icloud.com")
        );
        assert_eq!(
            page.fields,
            vec![
                InputField::text("appleId")
                    .with_label("Apple Account")
                    .with_placeholder("example@icloud.com")
                    .with_keyboard_type("emailAddress"),
                InputField::secure("pwd")
                    .with_label("Password")
                    .with_placeholder("Required"),
            ]
        );
        assert_eq!(page.hidden.len(), 4);
        assert_eq!(page.hidden_field("sessionId"), Some("42"));
        assert_eq!(page.loading_title.as_deref(), Some("Verifying..."));
        assert!(page
            .script
            .as_deref()
            .is_some_and(|s| s.contains("function validate()")));
        assert_eq!(
            page.help,
            Some(HelpLink {
                label: "Activation Lock Help".into(),
                url: "https://support.apple.com/kb/HT201441".into()
            })
        );
        assert!(page.is_auth_required());
        assert_eq!(
            page.submit,
            Some(SubmitTarget {
                id: Some("next".into()),
                url: "/deviceservices/deviceActivation".into(),
                http_method: Some("POST".into()),
                enabled_function: Some("validate".into()),
            })
        );
    }

    #[test]
    fn parse_rejects_garbage_without_panicking() {
        for body in [
            &b""[..],
            b"not xml",
            b"<xmlui>",
            b"<html><body/></html>",
            b"\xff\xfe<xmlui/>",
            b"<xmlui><page><editableTextRow label=\"x\"/></page></xmlui>",
            b"<!DOCTYPE x [<!ENTITY a \"&a;\">]><xmlui>&a;</xmlui>",
        ] {
            assert!(BuddyPage::parse(body).is_err(), "{body:?}");
        }
        assert!(matches!(
            BuddyPage::parse(b"<html/>"),
            Err(BuddymlError::NotXmlui { root }) if root == "html"
        ));
        let n = 100_000;
        let deep = format!(
            "<xmlui><page>{}{}</page></xmlui>",
            "<a>".repeat(n),
            "</a>".repeat(n)
        );
        let _ = BuddyPage::parse(deep.as_bytes());
        let wide = format!("<xmlui><page>{}</page></xmlui>", "<a/>".repeat(200_000));
        assert!(BuddyPage::parse(wide.as_bytes()).is_err(), "nodes limit");
        let empty = BuddyPage::parse(b"<xmlui/>").expect("empty page");
        assert!(empty.has_errors());
    }

    #[test]
    fn render_escapes_hostile_values() {
        let page = BuddyPage::lock_form(
            "T\"i<t>l&e",
            "line\twith tab",
            vec![InputField::secure("p\"w")],
            vec![
                ("ok".into(), "v\"<&>\n".into()),
                ("bad name".into(), "dropped".into()),
                ("ok".into(), "duplicate dropped".into()),
            ],
        );
        let xml = page.render();
        let parsed = BuddyPage::parse(xml.as_bytes()).expect("still well-formed");
        assert_eq!(parsed.page_title.as_deref(), Some("T\"i<t>l&e"));
        assert_eq!(parsed.fields[0].id, "p\"w");
        assert_eq!(parsed.hidden_field("ok"), Some("v\"<&>\n"));
        assert_eq!(parsed.hidden.len(), 2);
    }
}
